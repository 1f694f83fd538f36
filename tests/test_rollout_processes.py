"""Rollouts in worker processes (``--processes``): the same run as in one process, the
agent's spans still in the store, and failures that stay contained."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from process_factories import BrokenFactory, EchoFactory

from gepa_trace.cli import main
from gepa_trace.collectors.instrument import active_instrumentation
from gepa_trace.errors import ConfigError
from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer.processes import ProcessEvaluator, WorkerDied
from gepa_trace.optimizer.protocols import Example, RolloutContext
from gepa_trace.optimizer.rollouts import run_one
from gepa_trace.prompts import PromptSet
from gepa_trace.store import forget_store, open_store

CONTEXT = RolloutContext("run-test", 0, "val")
PROMPTS = PromptSet.from_dict({"components": {"answerer": "Answer the question."}})


def _shutdown_instrumentation():
    inst = active_instrumentation()
    if inst is not None:
        inst.shutdown()


def _example(name: str, **inputs) -> Example:
    return Example(id=name, inputs={"question": name, **inputs})


def test_examples_are_dealt_to_worker_processes_and_each_keeps_its_own():
    with ProcessEvaluator(EchoFactory(), processes=2, threads=4) as remote:
        first = [remote.evaluate(PROMPTS, _example(f"q{i}"), CONTEXT) for i in range(6)]
        again = [remote.evaluate(PROMPTS, _example(f"q{i}"), CONTEXT) for i in range(6)]
    pids = [r.output["pid"] for r in first]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert pids.count(pids[0]) == 3  # dealt evenly, in order of first request
    assert [r.output["pid"] for r in again] == pids  # an example stays where it went


def test_worker_processes_keep_the_agents_libraries_out_of_garbage_collection():
    # a full collection over them would stop every rollout of the process meanwhile
    with ProcessEvaluator(EchoFactory(), processes=2, threads=2) as remote:
        rollouts = [remote.evaluate(PROMPTS, _example(f"q{i}"), CONTEXT) for i in range(2)]
    assert all(r.output["frozen"] > 10_000 for r in rollouts)


def test_a_worker_that_dies_fails_its_rollout_and_is_replaced():
    with ProcessEvaluator(EchoFactory(), processes=2, threads=2) as remote:
        dying = _example("dies", die=True)
        with pytest.raises(WorkerDied, match="exited with code 3"):
            remote.evaluate(PROMPTS, dying, CONTEXT)
        rollout = run_one(remote, PROMPTS, dying, CONTEXT)  # as the engine records it
        assert rollout.score == 0.0 and "exited with code 3" in rollout.error
        # the same example's next rollout (another candidate) runs in a new process
        survivor = remote.evaluate(PROMPTS, _example("dies"), CONTEXT)
        assert survivor.score == 1.0


def test_an_evaluator_exception_in_a_worker_is_one_failed_rollout():
    with ProcessEvaluator(EchoFactory(), processes=2, threads=2) as remote:
        rollout = run_one(remote, PROMPTS, _example("bad", **{"raise": True}), CONTEXT)
        assert rollout.score == 0.0
        assert "ValueError: cannot answer bad" in rollout.error
        assert remote.evaluate(PROMPTS, _example("good"), CONTEXT).score == 1.0


def test_whether_a_retry_can_help_is_judged_in_the_worker_where_the_type_is_known():
    with ProcessEvaluator(EchoFactory(), processes=1, threads=2) as remote:
        auth = run_one(remote, PROMPTS, _example("key", bad_key=True), CONTEXT)
        flaky = run_one(remote, PROMPTS, _example("bad", **{"raise": True}), CONTEXT)
    assert "AuthenticationError" in auth.error and auth.permanent  # never retried
    assert not flaky.permanent


def test_a_factory_that_cannot_be_pickled_is_refused_before_any_process_starts():
    with pytest.raises(ConfigError, match="pickled"):
        ProcessEvaluator(lambda budget: None, processes=2, threads=2)


def test_a_factory_that_fails_in_the_worker_says_why():
    with pytest.raises(ConfigError, match="no module named 'my_agent'"):
        ProcessEvaluator(BrokenFactory(), processes=2, threads=2)


def test_llm_calls_metered_in_a_worker_are_charged_to_the_runs_budget():
    budget = Budget(max_rollouts=100)
    with ProcessEvaluator(EchoFactory(judge="gepa-sim/judge"), processes=2, threads=2,
                          budget=budget) as remote:
        for i in range(5):
            remote.evaluate(PROMPTS, _example(f"q{i}"), CONTEXT)
    spent = budget.spent()
    assert spent.llm_calls_by_role == {"judge": 5}
    assert spent.llm_calls == 5 and spent.tokens > 0


def test_killing_the_parent_leaves_no_worker_process_behind(tmp_path):
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from process_factories import EchoFactory\n"
        "from gepa_trace.optimizer.processes import ProcessEvaluator\n"
        "remote = ProcessEvaluator(EchoFactory(), processes=2, threads=2)\n"
        "print(' '.join(str(w.process.pid) for w in remote.workers), flush=True)\n"
        "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(children) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        alive = children
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if _running(pid)]
            time.sleep(0.1)
        assert not alive, f"worker processes {alive} outlived their parent"
    finally:
        parent.kill()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The same production traffic in two stores (a run's rollouts feed the next run's
    replay cache, so each optimization gets a store of its own)."""
    from gepa_trace.demo.traffic import run_traffic

    urls = [f"sqlite:///{tmp_path_factory.mktemp('traces') / f'store{i}.db'}" for i in (1, 2)]
    for url in urls:
        run_traffic(100, store=url, seed=3, feedback_rate=0.5)
        _shutdown_instrumentation()
    yield urls
    _shutdown_instrumentation()
    for url in urls:
        forget_store(url)


def _optimize(url: str, processes: int, budget: int = 120) -> dict:
    result = CliRunner().invoke(main, [
        "optimize", "--agent", "demo-qa", "--entrypoint", "gepa_trace.demo:build_agent",
        "--metric", "gepa_trace.demo:metric", "--reflection-lm", "gepa-sim/reflect",
        "--budget-rollouts", str(budget), "--workers", "4", "--processes", str(processes),
        "--store", url, "--json"])
    assert result.exit_code == 0, result.output
    _shutdown_instrumentation()
    return json.loads(result.stdout)


def test_optimizing_in_worker_processes_gives_the_same_run_as_in_one(recorded):
    one, two = _optimize(recorded[0], 1), _optimize(recorded[1], 2)
    same = ("best_val_score", "seed_val_score", "best_candidate_id", "candidates", "best_prompts",
            "held_out", "replay_cache_hits", "task_calls_made", "task_calls_sent")
    assert {k: two[k] for k in same} == {k: one[k] for k in same}
    assert two["totals"]["rollouts"] == one["totals"]["rollouts"]
    # every rollout the workers ran is traced into the store, tagged with the run
    store = open_store(recorded[1])
    with store.read() as conn:
        traced = conn.execute(sa.text(
            "SELECT count(DISTINCT e.trace_id) FROM evaluations e JOIN spans s "
            "ON s.trace_id = e.trace_id AND s.parent_span_id IS NULL "
            "WHERE e.run_id = :run"), {"run": two["run_id"]}).scalar()
        rollouts = conn.execute(sa.text(
            "SELECT count(*) FROM evaluations WHERE run_id = :run AND trace_id IS NOT NULL"),
            {"run": two["run_id"]}).scalar()
    assert rollouts > 100 and traced == rollouts


@pytest.mark.postgres
def test_worker_processes_trace_their_rollouts_into_postgresql(pg_url):
    from gepa_trace.demo.traffic import run_traffic

    run_traffic(60, store=pg_url, seed=4, feedback_rate=0.5)
    _shutdown_instrumentation()
    summary = _optimize(pg_url, 2, budget=60)
    store = open_store(pg_url)
    with store.read() as conn:
        untraced = conn.execute(sa.text(
            "SELECT count(*) FROM evaluations e WHERE e.run_id = :run AND NOT EXISTS "
            "(SELECT 1 FROM spans s WHERE s.trace_id = e.trace_id)"),
            {"run": summary["run_id"]}).scalar()
    assert summary["totals"]["rollouts"] > 20 and untraced == 0
