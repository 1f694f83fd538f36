"""0005_alias_changes: every change of an alias is kept as an immutable record (issue
21: manual promotions, exports, canary promotions and rollbacks, with who, when, why
and the evidence), so ``gepa-trace prompts history`` can show how production got here.

Aliases set before this revision have no recorded past: each gets one record saying so,
so that the history of every alias starts where the store's knowledge does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:  # alembic is imported only when a store needs migrating
    from alembic.operations import Operations

NAME = "0005_alias_changes"


def upgrade(op: Operations) -> None:
    op.create_table(
        "alias_changes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("component", sa.String(255), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("previous", sa.String(64)),
        sa.Column("version", sa.String(64)),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_alias_changes_alias", "alias_changes", ["alias", "component", "id"])
    op.execute(sa.text(
        "INSERT INTO alias_changes (component, alias, previous, version, actor, reason, "
        "evidence, created_at) SELECT component, alias, NULL, version, 'unknown', "
        "'set before gepa-trace kept alias history', '{}', updated_at FROM prompt_aliases "
        "ORDER BY updated_at, component, alias"))
