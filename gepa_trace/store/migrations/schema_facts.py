"""What a revision may ask of the database it upgrades: which columns and indexes exist.

Revisions from 0005 on know the schema they start from and need none of this. The
revisions written before the schema was frozen (0002-0004) could not: until then 0001
created tables from whatever the models said on the day, so stores recorded at one
revision differ (see ``r0004_settle_early_stores``). Keep these functions as they are:
shipped revisions call them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:  # alembic is imported only when a store needs migrating
    from alembic.operations import Operations


def column_names(op: Operations, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def add_missing_columns(op: Operations, table: str, *columns: sa.Column) -> None:
    """Add each column the table lacks (a NOT NULL one needs its server_default)."""
    have = column_names(op, table)
    for column in columns:
        if column.name not in have:
            op.add_column(table, column)


def index_where(index: dict) -> str | None:
    """The WHERE of a reflected partial index, normalized (no spaces, parentheses or
    case) so that SQLite's text and PostgreSQL's rendering of one condition compare equal."""
    options = index.get("dialect_options") or {}
    where = options.get("sqlite_where", options.get("postgresql_where"))
    return None if where is None else normalize_where(str(where))


def normalize_where(text: str) -> str:
    # PostgreSQL renders ``span_type = 'llm'`` as ``((span_type)::text = 'llm'::text)``
    text = re.sub(r"::(?:character varying|[a-z_]+)", "", text, flags=re.IGNORECASE)
    return re.sub(r"[\s()\"]", "", text).lower()


def ensure_index(op: Operations, name: str, table: str, columns: Sequence[str], *,
                 where: str | None = None, unique: bool = False) -> None:
    """Make index ``name`` exactly this (columns, uniqueness, partial WHERE): left alone
    when it already is, rebuilt when it differs, created when missing."""
    found = {i["name"]: i for i in sa.inspect(op.get_bind()).get_indexes(table)}.get(name)
    if found is not None:
        if (list(found["column_names"]) == list(columns) and bool(found["unique"]) == unique
                and index_where(found) == (None if where is None else normalize_where(where))):
            return
        op.drop_index(name, table_name=table)
    kwargs = {} if where is None else {"sqlite_where": sa.text(where),
                                       "postgresql_where": sa.text(where)}
    op.create_index(name, table, list(columns), unique=unique, **kwargs)


def drop_index_if_present(op: Operations, name: str, table: str) -> None:
    if name in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table)}:
        op.drop_index(name, table_name=table)
