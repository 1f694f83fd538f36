"""0003_prompt_flags: spans whose declared prompt version is not the hash of the
template they carry are flagged (issue 18: such a span must never seed a run).

Spans stored before are checked once here, by the rule new spans are checked by
(``store.spans``). The component index also orders by start time (``prompts.seed``
reads the latest). Shipped before the schema was frozen: it adds only what is missing.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gepa_trace.store.migrations.schema_facts import add_missing_columns, ensure_index

if TYPE_CHECKING:  # alembic is imported only when a store needs migrating
    from alembic.operations import Operations

NAME = "0003_prompt_flags"


def upgrade(op: Operations) -> None:
    add_missing_columns(op, "spans", sa.Column("prompt_flag", sa.String(32)))
    # Flagged spans are rare: the index costs nothing for the others.
    ensure_index(op, "ix_spans_flagged", "spans", ["component"],
                 where="prompt_flag IS NOT NULL")
    # by start time within a component: the seed reads a component's latest spans
    ensure_index(op, "ix_spans_component", "spans", ["component", "start_ns"],
                 where="component IS NOT NULL")
    _flag_stored_spans(op.get_bind())


def _flag_stored_spans(conn: Connection) -> None:
    from gepa_trace.conventions import prompt_template_json
    from gepa_trace.store.spans import INCONSISTENT, template_matches

    # Only spans with a component, a version and a template can be inconsistent; one
    # pass, a page at a time, keeping only the keys of those to flag.
    result = conn.execute(sa.text(
        "SELECT trace_id, span_id, prompt_version, attributes FROM spans "
        "WHERE component IS NOT NULL AND prompt_version IS NOT NULL AND ("
        "attributes LIKE '%gepa.prompt.template%' "
        "OR attributes LIKE '%llm.prompt_template.template%' "
        "OR attributes LIKE '%gen_ai.system_instructions%')"))
    flagged = []
    for rows in result.partitions(5000):
        for row in rows:
            try:
                attributes = json.loads(row.attributes)
            except ValueError:
                continue
            template = prompt_template_json(attributes) if isinstance(attributes, dict) \
                else None
            if template and not template_matches(row.prompt_version, template):
                flagged.append({"t": row.trace_id, "s": row.span_id})
    if flagged:
        conn.execute(sa.text("UPDATE spans SET prompt_flag = :flag "
                             "WHERE trace_id = :t AND span_id = :s"),
                     [dict(f, flag=INCONSISTENT) for f in flagged])
