"""Opening a store: the URL, the engine (SQLite in WAL mode or PostgreSQL), migrations.

``open_store()`` is the one way in. It builds one engine per URL per process and brings
the schema forward before handing the store out.

Which store (the one place this order is written; ``resolve_url`` implements it):

1. an explicit argument: ``--store URL`` (on the command, else on ``gepa-trace`` itself)
   or ``store=`` of a library call;
2. the store given to the latest ``gt.instrument()`` of this process, so that
   ``record_feedback``, ``optimize`` and ``load_prompts`` find the runs it records. It
   stays the default after ``inst.shutdown()`` (feedback and optimization often come
   after the recording has stopped) until another ``instrument()`` call replaces it;
3. ``$GEPA_TRACE_STORE``;
4. ``sqlite:///gepa_trace.db`` in the working directory.

Who creates a store: only ``open_store(url, create=True)``, used by what records traces
(``instrument()``'s exporter, ``gepa-trace collect``, ``ingest`` and ``demo``). Every other
caller gets ``StoreMissing`` ("no store at PATH", exit code 3) for a SQLite file that
does not exist, or a database (SQLite file, PostgreSQL schema) with no tables at all;
nothing is created, not even SQLite's -wal/-shm files. A database that has tables but
not ours (no ``gepa_migrations`` table) is refused by name for every caller, creators
included: we never add our tables to someone else's database.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlmodel import Session

from gepa_trace.config import setting
from gepa_trace.errors import ConfigError, StoreError, StoreMissing

logger = logging.getLogger(__name__)


class Store:
    """A handle on one database. Thread-safe; share one per URL."""

    def __init__(self, url: str, engine: Engine):
        self.url = url
        self.engine = engine
        self.dialect = engine.dialect.name  # "sqlite" | "postgresql"

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def write(self, *, busy_ms: int | None = None) -> Iterator[Connection]:
        """A connection inside one write transaction, committed on success.

        On SQLite the transaction starts with BEGIN IMMEDIATE, so a writer waits for the
        lock (up to the busy timeout, or ``busy_ms`` for this transaction) instead of
        failing halfway through.
        """
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection if self.dialect == "sqlite" else None
            before = None
            if busy_ms is not None and raw is not None:
                before = int(raw.execute("PRAGMA busy_timeout").fetchone()[0])
                raw.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
            try:
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    yield conn
            finally:
                if before is not None:  # a pooled connection: put its own timeout back
                    raw.execute(f"PRAGMA busy_timeout={before}")

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def session(self) -> Session:
        """An ORM session (for small reads and writes; bulk writes use ``write()``)."""
        return Session(self.engine, expire_on_commit=False)

    def insert_ignoring_duplicates(self, conn: Connection, table: Table,
                                   rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows; a row whose primary key is already stored is skipped, not an error."""
        if not rows:
            return
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:  # pragma: no cover - other dialects are refused at open
            raise StoreError(f"unsupported database {self.dialect!r}")
        conn.execute(insert(table).on_conflict_do_nothing(), list(rows))

    def dispose(self) -> None:
        self.engine.dispose()


_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()


# The store of the latest instrument() call in this process (see the module docstring).
_instrumented_url: str | None = None

MISSING_HINT = ("check --store / store= / $GEPA_TRACE_STORE; only gt.instrument() and "
                "the commands that record traces (collect, ingest, demo) create one")


def resolve_url(url: str | None = None) -> str:
    """The URL of the store to use, in the order of the module docstring."""
    if url:
        return str(url)
    if _instrumented_url is not None:
        return _instrumented_url
    return str(setting("store"))


def set_instrumented_store(url: str | None) -> None:
    """Make ``url`` the process's default store (``instrument()`` calls this); None
    forgets it, so the environment and the built-in default apply again."""
    global _instrumented_url
    _instrumented_url = url


def open_store(url: str | Store | None = None, *, create: bool = False) -> Store:
    """The store at ``url`` (resolved by ``resolve_url``), schema brought up to date.

    ``create=True`` (only for what records traces) creates a missing SQLite file and
    initialises a database with no tables. Raises ``StoreMissing`` when there is no
    store and ``create`` is false (nothing is created), ``StoreError`` for a database
    that is not ours or cannot be opened (``SchemaTooNewError``: from a newer version),
    and ``ConfigError`` for a URL that is not a supported database.
    """
    if isinstance(url, Store):
        return url
    url = resolve_url(url)
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            engine = _make_engine(url, create=create)
            store = Store(url, engine)
            from gepa_trace.store.migrations import migrate_forward

            try:
                migrate_forward(store, create=create)
                if store.dialect == "sqlite":
                    _use_wal(engine)
            except SQLAlchemyError as exc:
                store.dispose()
                raise StoreError(f"cannot open store {safe_url(url)}: "
                                 f"{_first_line(exc)}") from exc
            except BaseException:
                store.dispose()  # closing our connections also removes -wal/-shm files
                raise
            _stores[url] = store
        return store


def sqlite_path(url: str) -> Path | None:
    """The absolute path of a SQLite store's file; None for other databases, in-memory
    SQLite and ``file:`` URIs (whose existence is not ours to judge)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def forget_store(url: str) -> None:
    """Drop the cached engine for ``url`` (tests; closing a CLI process)."""
    with _stores_lock:
        store = _stores.pop(url, None)
    if store is not None:
        store.dispose()


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _make_engine(url: str, *, create: bool) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"store URL {safe_url(url)!r} is not a database URL "
                          "(expected sqlite:///path or postgresql+psycopg://...)") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, parsed, create=create)
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        try:
            return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)
        except ModuleNotFoundError as exc:
            from gepa_trace.errors import MissingDependency

            raise MissingDependency(
                "PostgreSQL needs psycopg: pip install 'gepa-trace[postgres]'") from exc
    raise ConfigError(f"store URL {safe_url(url)!r}: unsupported database {backend!r} "
                      "(use sqlite:/// or postgresql+psycopg://)")


def _sqlite_engine(url: str, parsed, *, create: bool) -> Engine:
    path = sqlite_path(url)
    # Checked before any connection: connecting is what would create the file.
    if path is not None and not path.exists():
        if not create:
            where = "" if path.parent.is_dir() else f"directory {path.parent} does not exist; "
            raise StoreMissing(f"no store at {path} ({where}{MISSING_HINT})")
        if not path.parent.is_dir():
            raise ConfigError(f"store URL {url!r}: directory {path.parent} does not exist")
    busy_ms = int(setting("sqlite_busy_timeout_ms"))
    engine = create_engine(parsed, connect_args={"check_same_thread": False,
                                                 "timeout": busy_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
        # We issue BEGIN ourselves (below) so that writers can ask for IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            # Only settings of this connection here: the file is not known to be ours yet
            # (WAL mode, which is written into the file, is set by _use_wal once it is).
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _use_wal(engine: Engine) -> None:
    """Switch a store of ours to WAL (persistent in the file; a no-op when it already is),
    so that a collector, an optimizer and readers can share it."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:  # a read-only database keeps its journal mode
            logger.debug("store stays in its journal mode: %s", exc)  # reads still work
        finally:
            cur.close()
    finally:
        raw.close()


__all__ = [
    "Store",
    "forget_store",
    "open_store",
    "resolve_url",
    "safe_url",
    "set_instrumented_store",
    "sqlite_path",
]


def failure_cause(exc: BaseException) -> str:
    """A write failure's cause for a log line: its first line, without the SQL statement
    or its parameters (which hold span content)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    line = text.splitlines()[0] if text else ""
    for marker in ("[SQL:", "[parameters:", "(Background on this error"):
        line = line.split(marker, 1)[0]
    return line.strip()[:200] or type(exc).__name__


def file_identity(path: Path) -> tuple[int, int]:
    """(st_dev, st_ino) of a store file, to tell later whether it was deleted/replaced."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def file_replaced(path: Path, identity: tuple[int, int] | None) -> bool:
    """True when ``path`` is gone or is another file than the one ``identity`` names."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # cannot tell (permissions): let the write report it
    return identity is not None and (st.st_dev, st.st_ino) != identity
