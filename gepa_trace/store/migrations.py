"""Named schema migrations, applied forward in order, each recorded in the database.

A migration is a function of a connection inside the migration transaction. Append new
ones to ``MIGRATIONS``; never edit or reorder one that has shipped. ``SCHEMA_VERSION``
is the number of migrations this code knows; a database that records more was written
by a newer gepa-trace and is refused rather than guessed at.
"""

from __future__ import annotations

import time
from typing import Callable

from sqlalchemy import Column, Float, MetaData, String, Table, select, text
from sqlalchemy.engine import Connection

from gepa_trace.errors import SchemaTooNewError
from gepa_trace.store.engine import safe_url

_meta = MetaData()
migrations_table = Table(
    "gepa_migrations", _meta,
    Column("seq", String(8), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("applied_at", Float, nullable=False),
)


def _initial(conn: Connection) -> None:
    from sqlmodel import SQLModel

    from gepa_trace.store import tables  # noqa: F401  (registers the tables)

    SQLModel.metadata.create_all(conn)


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("0001_initial", _initial),
]
SCHEMA_VERSION = len(MIGRATIONS)


def applied(conn: Connection) -> list[str]:
    rows = conn.execute(select(migrations_table.c.seq, migrations_table.c.name)
                        .order_by(migrations_table.c.seq)).all()
    return [name for _seq, name in rows]


def migrate_forward(store) -> list[str]:
    """Apply the migrations the database lacks; return their names."""
    with store.write() as conn:
        if store.dialect == "postgresql":
            # Two processes opening a new database at once: one migrates, one waits.
            conn.execute(text("SELECT pg_advisory_xact_lock(743201)"))
        _meta.create_all(conn, checkfirst=True)
        done = applied(conn)
        if len(done) > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"store {safe_url(store.url)} has schema version {len(done)} (last migration "
                f"{done[-1]!r}) but this gepa-trace knows only {SCHEMA_VERSION}; "
                "upgrade gepa-trace to open it")
        known = [name for name, _fn in MIGRATIONS]
        if done != known[: len(done)]:
            raise SchemaTooNewError(
                f"store {safe_url(store.url)} records migrations {done} that this gepa-trace "
                "does not know; upgrade gepa-trace to open it")
        new = []
        for index in range(len(done), SCHEMA_VERSION):
            name, fn = MIGRATIONS[index]
            fn(conn)
            conn.execute(migrations_table.insert().values(
                seq=f"{index + 1:04d}", name=name, applied_at=time.time()))
            new.append(name)
        return new
