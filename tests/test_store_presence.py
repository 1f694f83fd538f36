"""Who may create a store, and which databases are ours.

Only creators (``open_store(create=True)``: instrument's exporter, collect, ingest, demo)
create a store; every other call on a missing store raises ``StoreMissing`` and leaves
no file behind. A database with tables but no ``gepa_migrations`` is someone else's and
is refused by name, creators included, without a byte of it changing.
"""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
import sqlalchemy as sa
from rewind import forget_revisions_from

from gepa_trace.errors import StoreError, StoreMissing
from gepa_trace.prompts.registry import list_versions, load_prompts
from gepa_trace.replay.runs import list_runs
from gepa_trace.store import SCHEMA_VERSION, forget_store, open_store
from gepa_trace.store.components import list_components
from gepa_trace.store.feedback import import_feedback, record_feedback


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _foreign_sqlite(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()


READERS = {
    "open_store": lambda url: open_store(url),
    "record_feedback": lambda url: record_feedback("a" * 32, score=1, store=url),
    "list_components": lambda url: list_components(url),
    "list_runs": lambda url: list_runs(url),
    "list_versions": lambda url: list_versions(open_store(url)),
    "load_prompts": lambda url: load_prompts(store=url, fallback="prompts.production.json"),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_reading_a_missing_sqlite_store_creates_no_file(reader, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "typo.db"
    with pytest.raises(StoreMissing, match=f"^no store at {missing} ") as info:
        READERS[reader](f"sqlite:///{missing}")
    assert info.value.exit_code == 3
    assert _files(tmp_path) == []  # not the file, nor its -wal/-shm


def test_a_relative_path_is_reported_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreMissing, match=f"no store at {tmp_path / 'dmeo.db'} "
                                           r"\(check --store"):
        open_store("sqlite:///dmeo.db")


def test_import_feedback_on_a_missing_store_creates_nothing(tmp_path):
    ratings = tmp_path / "ratings.jsonl"
    ratings.write_text('{"trace_id": "' + "a" * 32 + '", "score": 1}\n')
    with pytest.raises(StoreMissing):
        import_feedback(f"sqlite:///{tmp_path / 'typo.db'}", ratings)
    assert _files(tmp_path) == ["ratings.jsonl"]


def test_a_creator_creates_a_missing_store_in_wal_mode(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    store = open_store(url, create=True)
    with store.read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM gepa_migrations")).scalar() \
            == SCHEMA_VERSION
    forget_store(url)
    assert open_store(url).url == url  # now readers find it
    assert sqlite3.connect(tmp_path / "new.db").execute("PRAGMA journal_mode").fetchone() \
        == ("wal",)
    forget_store(url)


def test_a_zero_byte_file_is_missing_for_readers_and_initialised_by_creators(tmp_path):
    path = tmp_path / "touched.db"
    path.touch()
    url = f"sqlite:///{path}"
    with pytest.raises(StoreMissing, match="the file has no tables"):
        open_store(url)
    assert path.stat().st_size == 0 and _files(tmp_path) == ["touched.db"]
    open_store(url, create=True)
    forget_store(url)
    assert open_store(url).dialect == "sqlite"
    forget_store(url)


@pytest.mark.parametrize("create", [False, True], ids=["reader", "creator"])
def test_a_foreign_sqlite_database_is_refused_by_name_and_left_unchanged(create, tmp_path):
    path = tmp_path / "app.db"
    _foreign_sqlite(path)
    before = _digest(path)
    with pytest.raises(StoreError, match=r"store sqlite:///.*app\.db is not a gepa-trace store "
                                         r"\(it has tables: orders, users\); refusing to add "
                                         "ours") as info:
        open_store(f"sqlite:///{path}", create=create)
    assert not isinstance(info.value, StoreMissing)
    assert _digest(path) == before and _files(tmp_path) == ["app.db"]
    tables = sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
    assert tables == [("orders",), ("users",)]


def test_a_file_that_is_not_sqlite_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 20)
    before = _digest(path)
    with pytest.raises(StoreError, match="file is not a database"):
        open_store(f"sqlite:///{path}", create=True)
    assert _digest(path) == before and _files(tmp_path) == ["notes.db"]


def test_an_existing_store_is_still_migrated_forward(sqlite_url):
    from gepa_trace.store.migrations import applied

    store = open_store(sqlite_url)
    with store.write() as conn:
        # as if written by the first release (0001 and its tables are in every store)
        forget_revisions_from(conn, "0002")
    forget_store(sqlite_url)
    with open_store(sqlite_url).read() as conn:
        assert len(applied(conn)) == SCHEMA_VERSION


@pytest.mark.postgres
def test_an_empty_postgres_schema_is_missing_for_readers_and_initialised_by_creators(
        empty_pg_url):
    with pytest.raises(StoreMissing, match="the database schema has no tables"):
        open_store(empty_pg_url)
    store = open_store(empty_pg_url, create=True)
    with store.read() as conn:
        assert "gepa_migrations" in sa.inspect(conn).get_table_names()


@pytest.mark.postgres
@pytest.mark.parametrize("create", [False, True], ids=["reader", "creator"])
def test_a_foreign_postgres_schema_is_refused_by_name(create, empty_pg_url):
    engine = sa.create_engine(empty_pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE invoices (id integer primary key)"))
    with pytest.raises(StoreError, match=r"\(it has tables: invoices\); refusing to add ours"):
        open_store(empty_pg_url, create=create)
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == ["invoices"]
    engine.dispose()
