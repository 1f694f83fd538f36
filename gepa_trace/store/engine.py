"""Opening a store: the URL, the engine (SQLite in WAL mode or PostgreSQL), migrations.

``open_store()`` is the one way in. It resolves the URL (argument, then
``GEPA_TRACE_STORE``, then ``sqlite:///gepa_trace.db``), builds one engine per URL
per process, and brings the schema forward before handing the store out.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from sqlalchemy import Table, create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlmodel import Session

from gepa_trace.config import setting
from gepa_trace.errors import ConfigError, StoreError


class Store:
    """A handle on one database. Thread-safe; share one per URL."""

    def __init__(self, url: str, engine: Engine):
        self.url = url
        self.engine = engine
        self.dialect = engine.dialect.name  # "sqlite" | "postgresql"

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection inside one write transaction, committed on success.

        On SQLite the transaction starts with BEGIN IMMEDIATE, so a writer waits for the
        lock (up to the busy timeout) instead of failing halfway through.
        """
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

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


def resolve_url(url: str | None = None) -> str:
    return str(setting("store", url))


def open_store(url: "str | Store | None" = None, *, migrate: bool = True) -> Store:
    """The store at ``url`` (or the configured one), schema brought up to date.

    Raises ``ConfigError`` for a URL that is not a supported database and ``StoreError``
    (``SchemaTooNewError``) when the database cannot be opened or is from a newer version.
    """
    if isinstance(url, Store):
        return url
    url = resolve_url(url)
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = Store(url, _make_engine(url))
            if migrate:
                from gepa_trace.store.migrations import migrate_forward

                try:
                    migrate_forward(store)
                except SQLAlchemyError as exc:
                    store.dispose()
                    raise StoreError(f"cannot open store {safe_url(url)}: "
                                     f"{_first_line(exc)}") from exc
            _stores[url] = store
        return store


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


def _make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"store URL {safe_url(url)!r} is not a database URL "
                          "(expected sqlite:///path or postgresql+psycopg://...)") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, parsed)
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


def _sqlite_engine(url: str, parsed) -> Engine:
    from pathlib import Path

    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        parent = Path(database).expanduser().resolve().parent
        if not parent.is_dir():
            raise ConfigError(f"store URL {url!r}: directory {parent} does not exist")
    busy_ms = int(setting("sqlite_busy_timeout_ms"))
    engine = create_engine(parsed, connect_args={"check_same_thread": False,
                                                 "timeout": busy_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
        # We issue BEGIN ourselves (below) so that writers can ask for IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            try:
                cur.execute("PRAGMA journal_mode=WAL")
            except Exception:
                pass  # a read-only database keeps its journal mode; reads still work
            cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


__all__ = ["Store", "open_store", "forget_store", "resolve_url", "safe_url"]
