"""Shared fixtures: a store on a temp SQLite file, and one in a fresh PostgreSQL schema.

Both stores already exist when the test starts (created as ``gt.instrument()`` would),
since only creators create one and most tests read or write a store rather than test
its creation; tests of creation and of missing stores use their own paths.

PostgreSQL tests use ``GEPA_TRACE_TEST_PG`` (default: the local server that ``.ci/run``
starts). When no server answers they are skipped, unless ``GEPA_TRACE_REQUIRE_PG=1``
(set by ``.ci/run``), where that is a failure.
"""

from __future__ import annotations

import os
import sys
import uuid

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

PG_URL = os.environ.get("GEPA_TRACE_TEST_PG",
                        "postgresql+psycopg://gepa:gepa@127.0.0.1:5432/gepa_test")


@pytest.fixture(autouse=True)
def _instrumented_store_stays_in_its_test():
    """``gt.instrument(store=X)`` makes X the process's default store until the next
    instrument() call; a test must not hand its temp store to the tests after it."""
    yield
    engine = sys.modules.get("gepa_trace.store.engine")
    if engine is not None:
        engine.set_instrumented_store(None)


@pytest.fixture
def sqlite_url(tmp_path):
    from gepa_trace.store import forget_store, open_store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    open_store(url, create=True)
    yield url
    forget_store(url)


def _pg_admin():
    import sqlalchemy as sa

    return sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@pytest.fixture
def empty_pg_url():
    """A PostgreSQL URL whose search_path is a fresh schema with no tables (no store
    yet), dropped afterwards."""
    import sqlalchemy as sa

    from gepa_trace.store import forget_store

    try:
        admin = _pg_admin()
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - no server here
        if os.environ.get("GEPA_TRACE_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL required but unreachable at {PG_URL}: {exc}")
        pytest.skip(f"no PostgreSQL at {PG_URL}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    yield url
    forget_store(url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def pg_url(empty_pg_url):
    """A store in a fresh PostgreSQL schema, dropped afterwards."""
    from gepa_trace.store import open_store

    open_store(empty_pg_url, create=True)
    return empty_pg_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request):
    """A fresh, empty store; the test runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
