"""0007_listing_indexes: the indexes that keep the listing queries off a full
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
path nothing.

gepa-trace never runs ANALYZE. On a SQLite file where someone did, the statistics of
ix_spans_agent_root average the NULL parent of roots with every other parent, and SQLite
may then list runs through that index and sort them all (as before this migration);
``DROP TABLE sqlite_stat1`` gives the plans back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:  # alembic is imported only when a store needs migrating
    from alembic.operations import Operations

NAME = "0007_listing_indexes"

_ROOT = "parent_span_id IS NULL"
_PRODUCTION_ROOT = "parent_span_id IS NULL AND run_id IS NULL"
_LLM_CALL = "span_type = 'llm' AND component IS NOT NULL"


def upgrade(op: Operations) -> None:
    op.create_index("ix_spans_roots_by_time", "spans",
                    ["start_ns", "trace_id", "span_id", "run_id"],
                    sqlite_where=sa.text(_ROOT), postgresql_where=sa.text(_ROOT))
    op.create_index("ix_spans_agent_runs_by_time", "spans",
                    ["agent", "start_ns", "trace_id", "span_id"],
                    sqlite_where=sa.text(_PRODUCTION_ROOT),
                    postgresql_where=sa.text(_PRODUCTION_ROOT))
    # span_type, although the WHERE fixes it: SQLite reads a column of the WHERE from
    # the table unless the index has it (a covering scan halved `components`).
    op.create_index("ix_spans_llm_calls", "spans",
                    ["component", "prompt_version", "start_ns", "span_type"],
                    sqlite_where=sa.text(_LLM_CALL), postgresql_where=sa.text(_LLM_CALL))
