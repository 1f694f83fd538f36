"""0004_settle_early_stores: every store onto one schema, whichever release made it.

Until this revision, 0001 created the tables from the models of the day, and the models
changed without a revision (the optimizer's columns, then partial span indexes), and
0002/0003 were edited after they shipped. So a store recorded at 0003 may lack the
optimizer's columns (made by the first release), or carry the old span indexes, a
non-partial feedback key or a component index without start time. This revision
settles each of those, and is the last one allowed to look before it acts: from here on
the schema a store is recorded at is the schema it has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from gepa_trace.store.migrations.schema_facts import (
    add_missing_columns,
    drop_index_if_present,
    ensure_index,
)

if TYPE_CHECKING:  # alembic is imported only when a store needs migrating
    from alembic.operations import Operations

NAME = "0004_settle_early_stores"


def upgrade(op: Operations) -> None:
    # Added to the models by the optimizer engine (15cb680) without a revision. NOT
    # NULL columns of rows that already exist need a server default.
    add_missing_columns(
        op, "optimization_runs",
        sa.Column("iteration", sa.Integer, nullable=False, server_default="0"),
        sa.Column("best_val_score", sa.Float),
        sa.Column("stop_reason", sa.Text),
    )
    add_missing_columns(
        op, "candidates",
        sa.Column("reason", sa.Text),
        sa.Column("minibatch", sa.Text, nullable=False, server_default="[]"),
        sa.Column("meta", sa.Text, nullable=False, server_default="{}"),
    )
    add_missing_columns(
        op, "evaluations",
        sa.Column("output", sa.Text),
        sa.Column("records", sa.Text, nullable=False, server_default="{}"),
    )
    # Partial span indexes, no span_type index (829b960): most spans have no component
    # and no run, and every index entry is paid for on the collector's write path.
    drop_index_if_present(op, "ix_spans_span_type", "spans")
    ensure_index(op, "ix_spans_run", "spans", ["run_id"], where="run_id IS NOT NULL")
    ensure_index(op, "ix_spans_component", "spans", ["component", "start_ns"],
                 where="component IS NOT NULL")
    ensure_index(op, "ix_spans_flagged", "spans", ["component"],
                 where="prompt_flag IS NOT NULL")
    ensure_index(op, "ux_feedback_key", "feedback", ["feedback_key"],
                 where="replaced_by IS NULL", unique=True)
