"""Named schema migrations, applied forward in order, each recorded in the database.

Each revision is one module ``rNNNN_<name>.py`` in this package with ``NAME`` (the name
recorded in ``gepa_migrations``) and ``upgrade(op)``, where ``op`` is Alembic's
operations API (``op.create_table``, ``op.add_column``, ``op.create_index(...,
sqlite_where=, postgresql_where=)``, ``op.execute``; ``op.get_bind()`` is the connection)
bound to the migration transaction, so one revision reads the same on SQLite and
PostgreSQL. No alembic.ini and no ``alembic`` command: the revisions ship in the package
and run when a store is opened.

To change the schema:

1. change the model in ``store/tables.py``;
2. add ``rNNNN_<what>.py`` (the next number) that makes exactly that change, written out
   (tables, columns, indexes by name and type): never ``metadata.create_all`` and never
   read today's models, which will have changed by the time an old store runs it;
3. append it to ``REVISIONS`` below.

A revision is frozen once it has shipped: never edit, reorder or remove one; fix a
mistake with a new revision. ``tests/test_migrations.py`` fails when the models and the
migrated schema differ (a column in ``tables.py`` without a revision, or the reverse).

``SCHEMA_VERSION`` is the number of revisions this code knows; a database that records
more, or other names, was written by a newer gepa-trace and is refused rather than
guessed at. The ``gepa_migrations`` table is what makes a database ours. One without it
is initialised only when it has no tables at all and the caller may create a store; a
database with other tables is refused, never added to (see ``store.engine``).
"""

from __future__ import annotations

import time
from types import ModuleType

from sqlalchemy import Column, Float, MetaData, String, Table, inspect, select, text
from sqlalchemy.engine import Connection

from gepa_trace.errors import SchemaTooNewError, StoreError, StoreMissing
from gepa_trace.store.engine import MISSING_HINT, safe_url, sqlite_path
from gepa_trace.store.migrations import (
    r0001_initial,
    r0002_feedback_fields,
    r0003_prompt_flags,
    r0004_settle_early_stores,
    r0005_alias_changes,
    r0006_error_index,
    r0007_listing_indexes,
    r0008_agent_call_indexes,
)

_meta = MetaData()
migrations_table = Table(
    "gepa_migrations", _meta,
    Column("seq", String(8), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("applied_at", Float, nullable=False),
)

#: Every revision, in the order it runs. Append only.
REVISIONS: list[ModuleType] = [
    r0001_initial,
    r0002_feedback_fields,
    r0003_prompt_flags,
    r0004_settle_early_stores,
    r0005_alias_changes,
    r0006_error_index,
    r0007_listing_indexes,
    r0008_agent_call_indexes,
]
SCHEMA_VERSION = len(REVISIONS)


def applied(conn: Connection) -> list[str]:
    rows = conn.execute(select(migrations_table.c.seq, migrations_table.c.name)
                        .order_by(migrations_table.c.seq)).all()
    return [name for _seq, name in rows]


def migrate_forward(store, *, create: bool = False) -> list[str]:
    """Apply the revisions the database lacks, in one transaction; return their names.

    A database without ``gepa_migrations`` is initialised only if it has no tables and
    ``create`` is true; otherwise ``StoreMissing`` (no tables) or ``StoreError`` (other
    tables), and nothing is written.
    """
    with store.write() as conn:
        if store.dialect == "postgresql":
            # Two processes opening a new database at once: one migrates, one waits.
            conn.execute(text("SELECT pg_advisory_xact_lock(743201)"))
        # Checked inside the write transaction, so two creators racing on one new
        # database see each other's tables rather than both deciding it is empty.
        tables = inspect(conn).get_table_names()
        if migrations_table.name not in tables:
            _refuse_unless_creatable(store, tables, create)
        _meta.create_all(conn, checkfirst=True)
        done = applied(conn)
        if len(done) > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"store {safe_url(store.url)} has schema version {len(done)} (last migration "
                f"{done[-1]!r}) but this gepa-trace knows only {SCHEMA_VERSION}; "
                "upgrade gepa-trace to open it")
        known = [revision.NAME for revision in REVISIONS]
        if done != known[: len(done)]:
            raise SchemaTooNewError(
                f"store {safe_url(store.url)} records migrations {done} that this gepa-trace "
                "does not know; upgrade gepa-trace to open it")
        if len(done) == SCHEMA_VERSION:
            return []
        # Alembic costs a fifth of a second to import: only when there is work for it.
        from alembic.operations import Operations
        from alembic.runtime.migration import MigrationContext

        op = Operations(MigrationContext.configure(connection=conn))
        new = []
        for index in range(len(done), SCHEMA_VERSION):
            revision = REVISIONS[index]
            revision.upgrade(op)
            conn.execute(migrations_table.insert().values(
                seq=f"{index + 1:04d}", name=revision.NAME, applied_at=time.time()))
            new.append(revision.NAME)
        return new


def _refuse_unless_creatable(store, tables: list[str], create: bool) -> None:
    url = safe_url(store.url)
    if tables:
        names = sorted(tables)
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise StoreError(f"store {url} is not a gepa-trace store (it has tables: {shown}); "
                         "refusing to add ours")
    if not create:
        path = sqlite_path(store.url)
        where = f"{path} (the file has no tables" if path is not None else \
            f"{url} (the database schema has no tables"
        raise StoreMissing(f"no store at {where}; {MISSING_HINT})")
