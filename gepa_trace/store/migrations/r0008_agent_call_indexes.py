"""0008_agent_call_indexes: the two partial indexes that make ``components --agent`` an
index-only join (issue 19: at 1M spans it read every root of the agent for its trace id
and then every span of those traces, 0.3-0.5 s).

- ``ix_spans_agent_traces``: the trace ids of an agent's runs (root spans, rollouts
  included), in trace id order;
- ``ix_spans_llm_calls_by_trace``: the LLM calls of a trace, covering what ``components``
  counts (component, prompt version, start time).

``list_components(agent=...)`` walks the first and looks each trace up in the second.
Both are partial: a span that is neither a root nor an LLM call with a component (most
of them) costs the write path nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:  # alembic is imported only when a store needs migrating
    from alembic.operations import Operations

NAME = "0008_agent_call_indexes"

_ROOT = "parent_span_id IS NULL"
_LLM_CALL = "span_type = 'llm' AND component IS NOT NULL"


def upgrade(op: Operations) -> None:
    op.create_index("ix_spans_agent_traces", "spans", ["agent", "trace_id"],
                    sqlite_where=sa.text(_ROOT), postgresql_where=sa.text(_ROOT))
    # span_type, although the WHERE fixes it: SQLite reads a column of the WHERE from the
    # table unless the index has it (as in ix_spans_llm_calls, revision 0007).
    op.create_index("ix_spans_llm_calls_by_trace", "spans",
                    ["trace_id", "component", "prompt_version", "start_ns", "span_type"],
                    sqlite_where=sa.text(_LLM_CALL), postgresql_where=sa.text(_LLM_CALL))
