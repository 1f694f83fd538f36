"""Migration 0004_listing_indexes: the indexes that keep the listing queries off a full
scan of the spans table (issue 19: at 1M spans, ``traces`` without ``--agent`` sorted
every root, ``components`` read every span).

- ``ix_spans_roots_by_time``: runs (root spans) by start time, with their optimization
  run id, for ``traces`` / ``list_runs`` without an agent (production runs: the run id
  is filtered in the index; ``--rollouts``: all of them) and for ``prune``'s old runs;
- ``ix_spans_agent_runs_by_time``: production runs (roots without an optimization run
  id) of an agent by start time, for example loading (``replay.dataset``),
  ``prune --agent`` and ``traces --agent``;
- ``ix_spans_llm_calls``: LLM calls by component and prompt version, covering what
  ``components`` counts.

All three are partial, so a span that is none of these (most of them) costs the write
path nothing. Self-contained and idempotent: an index already there is left alone.

gepa-trace never runs ANALYZE. On a SQLite file where someone did, the statistics of
ix_spans_agent_root average the NULL parent of roots with every other parent, and SQLite
may then list runs through that index and sort them all (as before this migration);
``DROP TABLE sqlite_stat1`` gives the plans back.
"""

from __future__ import annotations

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

#: name -> (columns, WHERE); tables.SpanRow declares the same indexes.
LISTING_INDEXES = {
    "ix_spans_roots_by_time": ("start_ns, trace_id, span_id, run_id",
                               "parent_span_id IS NULL"),
    "ix_spans_agent_runs_by_time": ("agent, start_ns, trace_id, span_id",
                                    "parent_span_id IS NULL AND run_id IS NULL"),
    # span_type, although the WHERE fixes it: SQLite reads a column of the WHERE from
    # the table unless the index has it (a covering scan halved `components`).
    "ix_spans_llm_calls": ("component, prompt_version, start_ns, span_type",
                           "span_type = 'llm' AND component IS NOT NULL"),
}


def listing_indexes(conn: Connection) -> None:
    """Create the listing indexes the spans table lacks (see the module docstring)."""
    have = {i["name"] for i in inspect(conn).get_indexes("spans")}
    for name, (columns, where) in LISTING_INDEXES.items():
        if name not in have:
            conn.execute(text(f"CREATE INDEX {name} ON spans ({columns}) WHERE {where}"))
