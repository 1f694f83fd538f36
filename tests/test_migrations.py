"""Migrations: every store, new or made by an earlier release, ends on the schema the
models declare, and keeps its rows readable.

``store_first_schema.sqlite`` was made by the first release's code (see
``fixtures/make_store_first_schema.py``). The drift check compares the migrated schema
with ``store/tables.py``: tables, columns with types and nullability (Alembic's
``compare_metadata``), and indexes by name, columns, uniqueness and partial WHERE.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from rewind import forget_revisions_from
from sqlmodel import SQLModel

from gepa_trace.store import SCHEMA_VERSION, forget_store, open_store
from gepa_trace.store import tables as _tables  # noqa: F401  (registers the models)
from gepa_trace.store.migrations import REVISIONS, applied, migrations_table
from gepa_trace.store.migrations.schema_facts import index_where, normalize_where

FIXTURE = Path(__file__).parent / "fixtures" / "store_first_schema.sqlite"
FIRST_RELEASE_TRACES = [f"{i:032x}" for i in (1, 2, 3, 4, 5, 6)]
ROLLOUT_TRACE = f"{101:032x}"


def schema_drift(conn: sa.Connection, metadata: sa.MetaData | None = None) -> list[str]:
    """How the database behind ``conn`` differs from ``metadata`` (the models); [] if
    it does not."""
    metadata = metadata or SQLModel.metadata
    context = MigrationContext.configure(conn, opts={
        "compare_type": True,
        "include_name": lambda name, kind, _parent: not (kind == "table"
                                                         and name == migrations_table.name),
    })
    found = [repr(diff) for diff in compare_metadata(context, metadata)]
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        declared = {index.name: (
            [c.name for c in index.columns], bool(index.unique),
            _declared_where(index, conn.dialect.name)) for index in table.indexes}
        if table.name not in inspector.get_table_names():
            continue  # compare_metadata reported it
        stored = {index["name"]: (list(index["column_names"]), bool(index["unique"]),
                                  index_where(index))
                  for index in inspector.get_indexes(table.name)}
        for name in sorted(set(declared) | set(stored)):
            if declared.get(name) != stored.get(name):
                found.append(f"index {table.name}.{name}: models {declared.get(name)}, "
                             f"database {stored.get(name)}")
    return found


def _declared_where(index: sa.Index, dialect: str) -> str | None:
    where = index.dialect_options[dialect].get("where") if dialect in (
        "sqlite", "postgresql") else None
    return None if where is None else normalize_where(str(where))


def _upgraded_first_release_store(tmp_path: Path) -> str:
    path = tmp_path / "old.db"
    shutil.copyfile(FIXTURE, path)
    return f"sqlite:///{path}"


def _pg_store_at_first_revision(url: str) -> None:
    """A PostgreSQL store as the first release left it: revision 0001 only, holding the
    fixture's rows (copied table by table from the SQLite file)."""
    source = sa.create_engine(f"sqlite:///{FIXTURE}")
    target = sa.create_engine(url)
    try:
        with source.connect() as src, target.begin() as dst:
            migrations_table.create(dst)
            REVISIONS[0].upgrade(Operations(MigrationContext.configure(connection=dst)))
            meta = sa.MetaData()
            meta.reflect(src)
            for table in meta.sorted_tables:
                rows = [dict(r) for r in src.execute(table.select()).mappings()]
                if rows:
                    dst.execute(sa.Table(table.name, sa.MetaData(),
                                         autoload_with=dst).insert(), rows)
    finally:
        source.dispose()
        target.dispose()


# ---------------------------------------------------------------- the fixture itself


def test_the_fixture_is_a_store_of_the_first_release():
    engine = sa.create_engine(f"sqlite:///{FIXTURE}")
    try:
        with engine.connect() as conn:
            assert applied(conn) == ["0001_initial"]
            columns = {c["name"] for c in sa.inspect(conn).get_columns("optimization_runs")}
            assert "iteration" not in columns  # added to the models later, unmigrated
            assert "example_marks" not in sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()
    assert FIXTURE.stat().st_size < 200_000


# ---------------------------------------------------------------- schema drift


def test_migrations_from_zero_build_exactly_the_schema_the_models_declare(store_url):
    store = open_store(store_url)
    with store.read() as conn:
        assert applied(conn) == [r.NAME for r in REVISIONS]
        assert schema_drift(conn) == []


def test_drift_check_sees_a_model_column_that_no_revision_adds(sqlite_url):
    models = sa.MetaData()
    for table in SQLModel.metadata.sorted_tables:
        table.to_metadata(models)
    models.tables["spans"].append_column(sa.Column("tenant", sa.String(64)))
    sa.Index("ix_spans_tenant", models.tables["spans"].c.tenant)
    with open_store(sqlite_url).read() as conn:
        drift = schema_drift(conn, models)
    assert any("tenant" in line and "add_column" in line for line in drift), drift
    assert any("ix_spans_tenant" in line for line in drift), drift


def test_drift_check_sees_an_index_that_lost_its_where(sqlite_url):
    store = open_store(sqlite_url)
    with store.write() as conn:
        conn.execute(sa.text("DROP INDEX ix_spans_run"))
        conn.execute(sa.text("CREATE INDEX ix_spans_run ON spans (run_id)"))
    with store.read() as conn:
        assert [line for line in schema_drift(conn) if "ix_spans_run" in line]


# ---------------------------------------------------------------- stores of earlier releases


def test_a_store_of_the_first_release_upgrades_to_the_current_schema(tmp_path):
    url = _upgraded_first_release_store(tmp_path)
    store = open_store(url)  # not create=True: an existing store is migrated, never made
    try:
        with store.read() as conn:
            assert applied(conn) == [r.NAME for r in REVISIONS]
            assert len(applied(conn)) == SCHEMA_VERSION
            assert schema_drift(conn) == []
    finally:
        forget_store(url)


def test_a_store_of_the_first_release_keeps_its_traces_feedback_and_examples(tmp_path):
    import gepa_trace as gt
    from gepa_trace.cli import main
    from gepa_trace.optimizer.persistence import load_run
    from gepa_trace.replay.dataset import load_examples
    from gepa_trace.store.queries import get_trace, list_runs

    url = _upgraded_first_release_store(tmp_path)
    store = gt.open_store(url)
    try:
        runs = list_runs(store, agent="qa", newest_first=False)
        assert [r.trace_id for r in runs] == FIRST_RELEASE_TRACES
        trace = get_trace(store, FIRST_RELEASE_TRACES[3])
        assert [s.name for s in trace.spans] == ["qa", "answer"]
        # the old default source 'human' reads as a user's record
        assert [(f.score, f.source, f.comment) for f in trace.feedback] == [
            (0.0, "user", "the answer should be Tokyo")]
        # the forged version (trace 6) is flagged and never seeds a run
        with store.read() as conn:
            flagged = conn.execute(sa.text("SELECT trace_id FROM spans WHERE prompt_flag "
                                           "IS NOT NULL")).scalars().all()
        assert flagged == [FIRST_RELEASE_TRACES[5]]
        examples = load_examples(store, "qa", min_examples=0).all()
        assert sorted(e.id for e in examples) == [FIRST_RELEASE_TRACES[i] for i in (0, 1, 3, 4)]
        assert {e.id: e.expected for e in examples}[FIRST_RELEASE_TRACES[3]] == "Tokyo"
        old_run = load_run(store, "run-first")
        assert old_run.row.status == "finished" and old_run.row.iteration == 0
        assert [c.id for c in old_run.candidates] == [0]
        # new records go in next to the old ones
        gt.record_feedback(FIRST_RELEASE_TRACES[2], score=1.0, store=store)
        result = CliRunner().invoke(main, ["traces", "--store", url, "--json"])
        assert result.exit_code == 0, result.output
        assert FIRST_RELEASE_TRACES[2] in result.output
        assert ROLLOUT_TRACE not in result.output  # a rollout stays a rollout
    finally:
        forget_store(url)


@pytest.mark.postgres
def test_a_postgres_store_at_the_first_revision_upgrades_and_keeps_its_rows(empty_pg_url):
    from gepa_trace.replay.dataset import load_examples

    _pg_store_at_first_revision(empty_pg_url)
    store = open_store(empty_pg_url)
    with store.read() as conn:
        assert applied(conn) == [r.NAME for r in REVISIONS]
        assert schema_drift(conn) == []
        sources = conn.execute(sa.text("SELECT DISTINCT source FROM feedback")).scalars()
        assert list(sources) == ["user"]
    assert len(load_examples(store, "qa", min_examples=0).all()) == 4


def test_a_store_left_with_the_early_indexes_is_settled(sqlite_url):
    """Stores recorded at 0003 by earlier code carry non-partial span and feedback-key
    indexes, the span_type index and a component index without start time; 0004 fixes
    them in place, rows untouched."""
    store = open_store(sqlite_url)
    with store.write() as conn:
        for name in ("ix_spans_run", "ix_spans_component", "ux_feedback_key"):
            conn.execute(sa.text(f"DROP INDEX {name}"))
        conn.execute(sa.text("CREATE INDEX ix_spans_run ON spans (run_id)"))
        conn.execute(sa.text("CREATE INDEX ix_spans_component ON spans (component) "
                             "WHERE component IS NOT NULL"))
        conn.execute(sa.text("CREATE UNIQUE INDEX ux_feedback_key ON feedback (feedback_key)"))
        conn.execute(sa.text("CREATE INDEX ix_spans_span_type ON spans (span_type)"))
        forget_revisions_from(conn, "0004")
        assert schema_drift(conn)
    forget_store(sqlite_url)
    with open_store(sqlite_url).read() as conn:
        assert schema_drift(conn) == []


def test_a_newer_store_is_refused_before_anything_is_migrated(tmp_path):
    from gepa_trace.errors import SchemaTooNewError

    url = _upgraded_first_release_store(tmp_path)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(migrations_table.insert().values(seq="0002", name="0002_from_elsewhere",
                                                      applied_at=0.0))
    engine.dispose()
    with pytest.raises(SchemaTooNewError, match="upgrade gepa-trace"):
        open_store(url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:  # nothing of 0002-0004 was applied
        assert "example_marks" not in sa.inspect(conn).get_table_names()
        assert json.loads(json.dumps(applied(conn))) == ["0001_initial", "0002_from_elsewhere"]
    engine.dispose()


def test_opening_an_up_to_date_store_does_not_import_alembic(sqlite_url):
    """Every command opens the store; Alembic (a fifth of a second to import) is loaded
    only when a revision has to run."""
    import subprocess
    import sys

    code = ("import sys; from gepa_trace.store import open_store; "
            f"open_store({sqlite_url!r}); print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "False"
