"""0002_feedback_fields: explicit feedback fields (issue 17).

The correction, the score's declared range, an idempotency key, replacement; the source
vocabulary user | reviewer | automated; the example marks table (excluded / golden runs).
Shipped before the schema was frozen: it adds only what the store lacks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gepa_trace.store.migrations.schema_facts import add_missing_columns, ensure_index

if TYPE_CHECKING:  # alembic is imported only when a store needs migrating
    from alembic.operations import Operations

NAME = "0002_feedback_fields"


def upgrade(op: Operations) -> None:
    conn = op.get_bind()
    add_missing_columns(
        op, "feedback",
        sa.Column("expected", sa.Text),
        sa.Column("expected_field", sa.String(255)),
        sa.Column("score_low", sa.Float),
        sa.Column("score_high", sa.Float),
        sa.Column("feedback_key", sa.String(128)),
        sa.Column("replaced_by", sa.Integer),
    )
    # Unique among records in effect only: a replacement may keep the feedback_id of
    # the record it replaces. Partial indexes: SQLite >= 3.8.
    ensure_index(op, "ux_feedback_key", "feedback", ["feedback_key"],
                 where="replaced_by IS NULL", unique=True)
    # Before: free text, "human" by default; now user | reviewer | automated, and the
    # aliases of store.verdict are stored as their canonical name. A source that is
    # neither (e.g. "llm") is left as it was: store.verdict ranks it as a user's.
    # Records stored without a range were 0..1 and keep NULL (meaning 0..1).
    from gepa_trace.store.verdict import SOURCE_ALIASES

    for alias, canonical in sorted(SOURCE_ALIASES.items()):
        conn.execute(sa.text("UPDATE feedback SET source = :canonical "
                             "WHERE lower(source) = :alias"),
                     {"canonical": canonical, "alias": alias})
    _key_old_feedback(conn)
    if "example_marks" not in sa.inspect(conn).get_table_names():
        op.create_table(
            "example_marks",
            sa.Column("agent", sa.String(255), nullable=False),
            sa.Column("trace_id", sa.String(32), nullable=False),
            sa.Column("mark", sa.String(16), nullable=False),
            sa.Column("reason", sa.Text),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.PrimaryKeyConstraint("agent", "trace_id"),
        )


def _key_old_feedback(conn: Connection) -> None:
    """Give records stored before keys existed their content key, so importing again a
    file imported before the upgrade stores nothing. Where old imports stored one
    content several times, only the first copy gets the key (the others stay in effect,
    as they were: the migration does not decide that a copy was a mistake)."""
    from gepa_trace.store.feedback_fields import content_key

    rows = conn.execute(sa.text(
        "SELECT id, trace_id, span_id, name, score, score_low, score_high, label, comment, "
        "expected, expected_field, source FROM feedback WHERE feedback_key IS NULL "
        "ORDER BY id")).mappings()
    seen: set[str] = set()
    keyed = []
    for row in rows:
        key = content_key(row)
        if key not in seen:
            seen.add(key)
            keyed.append({"id": row["id"], "key": key})
    if keyed:
        conn.execute(sa.text("UPDATE feedback SET feedback_key = :key WHERE id = :id"), keyed)
