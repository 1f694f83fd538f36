"""0006_error_index: a partial index of failed spans, so the UI's "has error" filter
reads the few failed spans instead of scanning the spans table (about 400 ms at 1M
spans on PostgreSQL without it). Partial: spans that did not fail cost nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:  # alembic is imported only when a store needs migrating
    from alembic.operations import Operations

NAME = "0006_error_index"


def upgrade(op: Operations) -> None:
    op.create_index("ix_spans_error", "spans", ["trace_id"],
                    sqlite_where=sa.text("status_code = 'ERROR'"),
                    postgresql_where=sa.text("status_code = 'ERROR'"))
