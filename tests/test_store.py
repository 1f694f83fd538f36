import sqlite3

import pytest
import sqlalchemy as sa

from gepa_trace.errors import ConfigError, SchemaTooNewError, StoreError
from gepa_trace.store import SCHEMA_VERSION, SpanRow, forget_store, open_store


def test_open_store_creates_schema_and_records_migrations(store_url):
    store = open_store(store_url)
    with store.read() as conn:
        names = conn.execute(sa.text("SELECT name FROM gepa_migrations ORDER BY seq")).scalars().all()
    assert len(names) == SCHEMA_VERSION
    assert names[0] == "0001_initial"


def test_reopening_applies_nothing_twice(store_url):
    open_store(store_url)
    forget_store(store_url)
    store = open_store(store_url)
    with store.read() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM gepa_migrations")).scalar()
    assert count == SCHEMA_VERSION


def test_sqlite_store_uses_wal(sqlite_url):
    open_store(sqlite_url)
    path = sqlite_url.removeprefix("sqlite:///")
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_database_from_newer_version_is_refused(store_url):
    store = open_store(store_url)
    with store.write() as conn:
        conn.execute(sa.text("INSERT INTO gepa_migrations (seq, name, applied_at) "
                             "VALUES ('9999', '9999_from_the_future', 0)"))
    forget_store(store_url)
    with pytest.raises(SchemaTooNewError, match="upgrade gepa-trace"):
        open_store(store_url)


def test_duplicate_spans_are_ignored_not_errors(store_url):
    store = open_store(store_url)
    row = {"trace_id": "a" * 32, "span_id": "b" * 16, "name": "x", "start_ns": 1, "end_ns": 2}
    with store.write() as conn:
        store.insert_ignoring_duplicates(conn, SpanRow.__table__, [row, row])
    with store.write() as conn:
        store.insert_ignoring_duplicates(conn, SpanRow.__table__, [row])
    with store.read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM spans")).scalar() == 1


def test_bad_store_urls_name_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="not a database URL"):
        open_store("not a url")
    with pytest.raises(ConfigError, match="unsupported database"):
        open_store("mysql://u@h/db")
    with pytest.raises(ConfigError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/missing/dir/x.db", create=True)


def test_unreachable_postgres_is_a_store_error_without_password():
    url = "postgresql+psycopg://user:s3cret@127.0.0.1:1/nothing?connect_timeout=1"
    with pytest.raises(StoreError) as info:
        open_store(url)
    assert "s3cret" not in str(info.value)


def test_write_spans_fills_derived_columns_and_records_prompt_versions(store_url):
    import json

    from gepa_trace.store.spans import write_spans

    store = open_store(store_url)
    from gepa_trace.prompts.templates import template_version

    messages = [{"role": "system", "content": "Plan."}]
    template, version = json.dumps(messages), template_version(messages)
    span = {"trace_id": "1" * 32, "span_id": "2" * 16, "parent_span_id": None, "name": "llm",
            "kind": "INTERNAL", "start_ns": 10, "end_ns": 20, "status_code": "OK",
            "attributes": {"openinference.span.kind": "LLM", "gepa.agent": "qa",
                           "gepa.component": "planner", "gepa.prompt.version": version,
                           "gepa.prompt.template": template, "llm.token_count.prompt": 7},
            "events": [], "resource": {"service.name": "svc"}}
    write_spans(store, [span])
    write_spans(store, [span])  # a retry stores nothing twice
    with store.read() as conn:
        rows = conn.execute(sa.text("SELECT agent, component, span_type, input_tokens, "
                                    "service_name FROM spans")).all()
        versions = conn.execute(sa.text("SELECT component, version, template "
                                        "FROM prompt_versions")).all()
    assert rows == [("qa", "planner", "llm", 7, "svc")]
    assert versions == [("planner", version, template)]
