"""Which store a call uses when it is not told: the store given to ``gt.instrument()``
follows every later call of the process (feedback, prompts, queries, open_store), an
explicit argument still wins, and the environment comes after both."""

from __future__ import annotations

import pytest

import gepa_trace as gt
from gepa_trace.errors import StoreMissing
from gepa_trace.store import forget_store, open_store, resolve_url
from gepa_trace.store.engine import set_instrumented_store
from gepa_trace.store.queries import feedback_for_traces


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with nothing in it, and no $GEPA_TRACE_STORE."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEPA_TRACE_STORE", raising=False)
    return tmp_path


@pytest.fixture
def my_store(workdir):
    url = f"sqlite:///{workdir / 'my.db'}"
    yield url
    forget_store(url)


def _one_run(agent: str = "my-agent") -> str:
    with gt.agent_run(agent, inputs="Which country is Lyon in?") as run:
        run.set_outputs("France")
    return run.trace_id


def test_feedback_after_instrument_goes_to_the_instrumented_store(my_store, workdir):
    inst = gt.instrument(store=my_store, service_name="my-agent")
    try:
        trace_id = _one_run()
        # Right after the run, before the exporter's delay: the store may not exist yet.
        recorded = gt.record_feedback(trace_id, score=0, comment="wrong")
    finally:
        inst.shutdown()
    assert feedback_for_traces(open_store(my_store), [trace_id]) == {trace_id: [recorded]}
    assert sorted(p.name for p in workdir.iterdir() if p.suffix == ".db") == ["my.db"]


def test_the_instrumented_store_stays_the_default_after_shutdown(my_store, workdir):
    inst = gt.instrument(store=my_store, service_name="my-agent")
    trace_id = _one_run()
    inst.shutdown()  # flushes; feedback and optimization often come after this
    gt.record_feedback(trace_id, score=1)
    assert resolve_url() == my_store
    assert open_store() is open_store(my_store)
    assert not (workdir / "gepa_trace.db").exists()


def test_the_next_instrument_call_replaces_the_default(my_store, workdir):
    other = f"sqlite:///{workdir / 'other.db'}"
    gt.instrument(store=my_store, service_name="my-agent").shutdown()
    gt.instrument(store=other, service_name="my-agent").shutdown()
    assert resolve_url() == other
    forget_store(other)


def test_an_explicit_store_beats_the_instrumented_one(my_store, workdir, sqlite_url):
    inst = gt.instrument(store=my_store, service_name="my-agent")
    inst.shutdown()
    assert resolve_url(sqlite_url) == sqlite_url
    assert open_store(sqlite_url).url == sqlite_url


def test_the_instrumented_store_beats_the_environment(my_store, workdir, monkeypatch):
    monkeypatch.setenv("GEPA_TRACE_STORE", f"sqlite:///{workdir / 'env.db'}")
    assert resolve_url().endswith("env.db")
    gt.instrument(store=my_store, service_name="my-agent").shutdown()
    assert resolve_url() == my_store


def test_without_instrument_the_environment_then_the_builtin_default_apply(workdir,
                                                                         monkeypatch):
    set_instrumented_store(None)
    assert resolve_url() == "sqlite:///gepa_trace.db"
    monkeypatch.setenv("GEPA_TRACE_STORE", "sqlite:///from-env.db")
    assert resolve_url() == "sqlite:///from-env.db"


def test_load_prompts_reads_the_instrumented_store(my_store, workdir):
    from gepa_trace.prompts.promptset import PromptSet, PromptVersion
    from gepa_trace.prompts.registry import promote, record_versions

    inst = gt.instrument(store=my_store, service_name="my-agent")
    _one_run()
    inst.shutdown()
    prompts = PromptSet({"planner": PromptVersion("planner", [
        {"role": "system", "content": "Plan."}])}, agent="my-agent")
    record_versions(open_store(my_store), prompts, origin="observed")
    promote(open_store(my_store), "planner", prompts.versions()["planner"],
            alias="production")
    loaded = gt.load_prompts(fallback=workdir / "fallback.json")
    assert loaded.versions() == prompts.versions()


def test_a_missing_default_store_is_reported_not_created(workdir):
    set_instrumented_store(None)
    with pytest.raises(StoreMissing, match=f"no store at {workdir / 'gepa_trace.db'}"):
        gt.record_feedback("a" * 32, score=1)
    assert list(workdir.iterdir()) == []


def test_instrumenting_someone_elses_database_never_breaks_the_agent(workdir, caplog):
    import hashlib
    import sqlite3

    path = workdir / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    inst = gt.instrument(store=f"sqlite:///{path}", service_name="my-agent")
    try:
        _one_run()  # the agent's own work goes on
        assert inst.force_flush() is False  # the store refused the spans
    finally:
        inst.shutdown()
    assert "is not a gepa-trace store" in caplog.text
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    forget_store(f"sqlite:///{path}")
