"""`gepa-trace prune`: old production traces and old rollout spans go; what a run, an
alias, a mark or an active run's examples refer to stays; the dry run tells the truth."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from instrumented import instrumentation_shut_down
from sqlalchemy import insert, text

from gepa_trace.cli import main
from gepa_trace.store import (
    EvaluationRow,
    ExampleMarkRow,
    FeedbackRow,
    OptimizationRunRow,
    PromptAliasRow,
    SpanRow,
    forget_store,
    open_store,
)
from gepa_trace.store.prune import prune

COUNT_FIELDS = ("traces", "spans", "feedback", "rollout_runs", "rollout_spans",
                "payload_bytes", "kept_traces")
DAY = 86400.0


# --- the demo store after three demo runs (acceptance 4 of issue 19) ----------------

@pytest.fixture(scope="module")
def three_demo_runs(tmp_path_factory) -> Path:
    """A SQLite store after three small demo runs into it (traffic + optimization each)."""
    from gepa_trace.demo.cycle import DemoSettings, run_demo

    base = tmp_path_factory.mktemp("prune-demo")
    url = f"sqlite:///{base / 'demo.db'}"
    for i in range(3):
        with instrumentation_shut_down():
            run_demo(DemoSettings(store=url, out_dir=base / f"out{i}", runs=40,
                                  budget_rollouts=40, workers=2, seed=i))
    forget_store(url)
    return base / "demo.db"


def _run(*args: str) -> dict:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_prune_halves_the_demo_store_and_keeps_every_run_alias_mark_and_example_in_use(
        three_demo_runs, tmp_path):
    db = tmp_path / "store.db"
    shutil.copy(three_demo_runs, db)
    url = f"sqlite:///{db}"
    runs = _rows(db, "SELECT id, agent FROM optimization_runs ORDER BY started_at")
    assert len(runs) == 3
    newest = runs[-1][0]
    in_use = {r[0] for r in _rows(
        db, f"SELECT DISTINCT example_id FROM evaluations WHERE run_id = '{newest}'")}
    assert in_use
    # golden and excluded marks on old traffic that no run uses
    spare = [r[0] for r in _rows(db, "SELECT trace_id FROM spans WHERE parent_span_id IS NULL "
                                     "AND run_id IS NULL ORDER BY trace_id")
             if r[0] not in in_use][:2]
    version = _rows(db, "SELECT component, version FROM prompt_versions LIMIT 1")[0]
    store = open_store(url)
    with store.write() as conn:
        conn.execute(insert(ExampleMarkRow.__table__), [
            {"agent": "demo-qa", "trace_id": spare[0], "mark": "golden", "created_at": 1.0},
            {"agent": "demo-qa", "trace_id": spare[1], "mark": "excluded", "created_at": 1.0}])
        conn.execute(insert(PromptAliasRow.__table__), [
            {"component": version[0], "alias": "production", "version": version[1],
             "updated_at": 1.0}])
    versions_before = _rows(db, "SELECT component, version FROM prompt_versions")
    forget_store(url)
    size_before = db.stat().st_size + (Path(f"{db}-wal").stat().st_size
                                       if Path(f"{db}-wal").exists() else 0)

    dry = _run("prune", "--older-than", "0d", "--dry-run", "--json", "--store", url)
    real = _run("prune", "--older-than", "0d", "--json", "--store", url)

    assert {k: dry[k] for k in COUNT_FIELDS} == {k: real[k] for k in COUNT_FIELDS}
    assert real["traces"] > 0 and real["rollout_spans"] > 0 and real["rollout_runs"] == 3
    assert real["vacuum"] == "full"
    assert db.stat().st_size <= size_before / 2
    # a second prune finds nothing more: the dry run counted exactly what went
    again = _run("prune", "--older-than", "0d", "--dry-run", "--json", "--store", url)
    assert again["traces"] == 0 and again["rollout_spans"] == 0
    # every run, its rows, the alias, the prompt versions and the marks survive
    assert _rows(db, "SELECT id, agent FROM optimization_runs ORDER BY started_at") == runs
    assert _rows(db, "SELECT component, version FROM prompt_versions") == versions_before
    assert _rows(db, "SELECT alias FROM prompt_aliases") == [("production",)]
    assert sorted(_rows(db, "SELECT trace_id, mark FROM example_marks")) == sorted(
        [(spare[0], "golden"), (spare[1], "excluded")])
    roots = {r[0] for r in _rows(db, "SELECT trace_id FROM spans WHERE parent_span_id IS NULL")}
    assert in_use | set(spare) <= roots
    assert _rows(db, "SELECT COUNT(*) FROM spans WHERE run_id IS NOT NULL") == [(0,)]
    # runs show, report, export and examples still work on runs whose rollouts are gone
    for run_id, _agent in runs:
        shown = _run("runs", "show", run_id, "--json", "--store", url)
        assert shown["id"] == run_id
        result = CliRunner().invoke(main, ["report", run_id, "--store", url,
                                           "--out", str(tmp_path / f"{run_id}.html")])
        assert result.exit_code == 0, result.output
        result = CliRunner().invoke(main, ["export", run_id, "--force", "--store", url,
                                           "--out", str(tmp_path / f"{run_id}.json")])
        assert result.exit_code == 0, result.output
    examples = _run("examples", "--agent", "demo-qa", "--json", "--store", url)
    listed = {e["trace_id"] for e in examples["examples"]}
    # a marked spare may ask what an in-use run asked: then the marked one is the example
    # and the other is left out as its duplicate (the traffic repeats questions)
    listed |= {e["trace_id"] for e in examples["left_out"]
               if e["reason"] == "duplicate" and e["duplicate_of"] in spare}
    assert listed >= in_use
    forget_store(url)


# --- the keep rules, on SQLite and PostgreSQL ---------------------------------------

def _span(trace_id: str, start_s: float, *, run_id: str | None = None,
          agent: str = "bot", span_id: str = "a" * 16, parent: str | None = None) -> dict:
    ns = int(start_s * 1e9)
    return {"trace_id": trace_id, "span_id": span_id, "parent_span_id": parent,
            "name": "agent", "start_ns": ns, "end_ns": ns + 1000, "attributes": "{}",
            "events": "[]", "resource": "{}", "agent": agent, "run_id": run_id}


def _trace(trace_id: str, start_s: float, **kw) -> list[dict]:
    """A root and one child span."""
    return [_span(trace_id, start_s, **kw),
            _span(trace_id, start_s, span_id="b" * 16, parent="a" * 16, **kw)]


def _eval(run_id: str, example_id: str, trace_id: str | None = None) -> dict:
    return {"run_id": run_id, "candidate_id": 0, "example_id": example_id, "score": 1.0,
            "trace_id": trace_id, "created_at": 1.0}


def _run_row(run_id: str, status: str, finished_at: float | None, agent: str = "bot") -> dict:
    return {"id": run_id, "agent": agent, "status": status, "started_at": 1.0,
            "finished_at": finished_at}


@pytest.fixture
def seeded(store_url):
    """Old traces: t-running (example of a running run), t-golden, t-excluded (marked),
    t-feedback (has feedback), t-old-run (example of an older finished run only),
    t-new-run (example of the newest finished run), t-plain; t-recent is recent; and
    rollout traces of the running run (r-run), of the finished runs (r-fin1/2) and of a
    preflight (r-preflight)."""
    now = time.time()
    old = now - 40 * DAY
    spans = []
    for t in ("t-running", "t-golden", "t-excluded", "t-feedback", "t-old-run",
              "t-new-run", "t-plain"):
        spans += _trace(t, old)
    spans += _trace("t-recent", now - DAY)
    spans += _trace("t-other", old, agent="other")
    spans += _trace("r-run", old, run_id="run-active")
    spans += _trace("r-fin1", old, run_id="run-fin1")
    spans += _trace("r-fin2", old, run_id="run-fin2")
    spans += _trace("r-preflight", old, run_id="preflight")  # no run row
    store = open_store(store_url)
    with store.write() as conn:
        conn.execute(insert(SpanRow.__table__), spans)
        conn.execute(insert(OptimizationRunRow.__table__), [
            _run_row("run-active", "running", None),
            _run_row("run-fin1", "finished", old),
            _run_row("run-fin2", "finished", old + DAY)])
        conn.execute(insert(EvaluationRow.__table__), [
            _eval("run-active", "t-running", "r-run"), _eval("run-fin1", "t-old-run", "r-fin1"),
            _eval("run-fin2", "t-new-run", "r-fin2")])
        conn.execute(insert(ExampleMarkRow.__table__), [
            {"agent": "bot", "trace_id": "t-golden", "mark": "golden", "created_at": 1.0},
            {"agent": "bot", "trace_id": "t-excluded", "mark": "excluded", "created_at": 1.0}])
        conn.execute(insert(FeedbackRow.__table__), [
            {"trace_id": "t-feedback", "score": 1.0, "created_at": 1.0},
            {"trace_id": "t-plain", "score": 0.0, "created_at": 1.0}])
    return store, now


def _traces_left(store) -> set[str]:
    with store.read() as conn:
        return {r[0] for r in conn.execute(text("SELECT DISTINCT trace_id FROM spans"))}


def test_prune_keeps_active_and_newest_runs_examples_and_marked_traces(seeded):
    store, now = seeded
    counts = prune(store, cutoff_s=now - 30 * DAY, vacuum=False)
    assert _traces_left(store) == {"t-running", "t-golden", "t-excluded", "t-new-run",
                                   "t-recent", "r-run"}
    assert (counts.traces, counts.spans, counts.feedback) == (4, 8, 2)
    assert (counts.rollout_runs, counts.rollout_spans) == (2, 6)
    with store.read() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM example_marks")).scalar_one() == 2
        assert conn.execute(text("SELECT COUNT(*) FROM feedback")).scalar_one() == 0
        assert conn.execute(text("SELECT COUNT(*) FROM evaluations")).scalar_one() == 3
        assert conn.execute(text("SELECT COUNT(*) FROM optimization_runs")).scalar_one() == 3


def test_keep_feedback_keeps_traces_with_feedback_whole(seeded):
    store, now = seeded
    counts = prune(store, cutoff_s=now - 30 * DAY, keep_feedback=True, vacuum=False)
    left = _traces_left(store)
    assert {"t-feedback", "t-plain"} <= left and "t-old-run" not in left
    assert counts.feedback == 0
    with store.read() as conn:
        assert conn.execute(text(
            "SELECT COUNT(*) FROM spans WHERE trace_id = 't-feedback'")).scalar_one() == 2


def test_agent_limits_prune_to_that_agent_and_its_runs(seeded):
    store, now = seeded
    prune(store, cutoff_s=now - 30 * DAY, agent="other", vacuum=False)
    left = _traces_left(store)
    assert "t-other" not in left and {"t-plain", "r-fin1", "r-fin2"} <= left


def test_rollout_spans_have_their_own_age(seeded):
    store, now = seeded
    counts = prune(store, cutoff_s=now - 30 * DAY, rollout_cutoff_s=now - 100 * DAY,
                   vacuum=False)
    assert counts.rollout_spans == 0
    assert {"r-fin1", "r-fin2", "r-run", "r-preflight"} <= _traces_left(store)


def test_dry_run_deletes_nothing_and_counts_what_the_real_run_deletes(seeded):
    store, now = seeded
    before = _traces_left(store)
    dry = prune(store, cutoff_s=now - 30 * DAY, dry_run=True)
    assert _traces_left(store) == before
    real = prune(store, cutoff_s=now - 30 * DAY, vacuum=False)
    assert {k: getattr(dry, k) for k in COUNT_FIELDS} == {
        k: getattr(real, k) for k in COUNT_FIELDS}


def test_prune_refuses_a_bad_age_and_a_missing_store(tmp_path):
    result = CliRunner().invoke(main, ["prune", "--older-than", "soon", "--store",
                                       f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 2 and "soon" in result.output
    result = CliRunner().invoke(main, ["prune", "--older-than", "30d", "--store",
                                       f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 3 and "no store" in result.output
    assert not (tmp_path / "x.db").exists()


def test_an_incremental_auto_vacuum_store_is_reclaimed_incrementally(sqlite_url):
    store = open_store(sqlite_url)
    raw = store.engine.raw_connection()
    try:
        raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
        raw.execute("VACUUM")  # the mode takes effect on an existing file only after this
    finally:
        raw.close()
    now = time.time()
    payload = json.dumps({"text": "x" * 4000})
    with store.write() as conn:
        conn.execute(insert(SpanRow.__table__), [
            dict(_span(f"t{i:04d}", now - 40 * DAY), attributes=payload) for i in range(500)])
    counts = prune(store, cutoff_s=now - DAY)
    assert counts.traces == 500 and counts.vacuum == "incremental"
    assert counts.bytes_after < counts.bytes_before / 2


def test_prune_refuses_while_an_optimization_of_the_agent_holds_its_lock(seeded):
    from gepa_trace.optimizer.lock import RunLock

    store, _now = seeded
    before = _traces_left(store)
    lock = RunLock(store, "bot", "run-active", 300.0)
    lock.acquire()
    try:
        out = CliRunner().invoke(main, ["prune", "--older-than", "30d", "--store", store.url])
        assert out.exit_code == 5, out.output
        errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "run-active" in errors[0], out.stderr
        assert _traces_left(store) == before  # nothing deleted
    finally:
        lock.release()
    out = CliRunner().invoke(main, ["prune", "--older-than", "30d", "--store", store.url,
                                    "--no-vacuum"])
    assert out.exit_code == 0, out.output
    with store.read() as conn:  # prune gave the locks back
        assert conn.execute(text("SELECT COUNT(*) FROM run_locks")).scalar_one() == 0
