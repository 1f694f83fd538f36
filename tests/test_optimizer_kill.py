"""A run killed with SIGKILL resumes (issue 4, acceptance 3): everything stored before
the kill is still there, the run finishes, and the rollouts spent across both processes
stay within the budget plus those in flight at the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import sqlalchemy as sa

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

from test_optimizer_toys import RuleEvaluator, RuleReflectionLM, world

from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer import Optimizer, load_run
from gepa_trace.store import forget_store, open_store

BUDGET = 300
WORKERS = 4

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_optimizer_toys import SEED, RuleEvaluator, RuleReflectionLM, world
    from gepa_trace.lm.budget import Budget
    from gepa_trace.optimizer import Optimizer, OptimizerConfig
    from gepa_trace.store import open_store

    class Logged(RuleEvaluator):
        # one line per rollout started, so the test knows what this process spent
        def evaluate(self, prompts, example, context):
            with open({started!r}, "a") as fh:
                fh.write(example.id + "\\n")
            return super().evaluate(prompts, example, context)

    train, val, _ = world()
    Optimizer(Logged(capacity=2, latency_s=0.004), RuleReflectionLM(), SEED, train, val,
              Budget(max_rollouts={budget}), store=open_store({url!r}), agent="toy-agent",
              config=OptimizerConfig(seed=1, workers={workers}), run_id="killed-run").run()
""")


def _snapshot(store):
    with store.read() as conn:
        candidates = conn.execute(sa.text(
            "SELECT id, prompts, parents, origin, diagnosis FROM candidates "
            "WHERE run_id = 'killed-run' ORDER BY id")).all()
        evaluations = conn.execute(sa.text(
            "SELECT id, candidate_id, example_id, score, feedback FROM evaluations "
            "WHERE run_id = 'killed-run' ORDER BY id")).all()
    return [tuple(r) for r in candidates], [tuple(r) for r in evaluations]


def test_sigkilled_run_resumes_without_losing_or_repeating_work(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    started = tmp_path / "started.txt"
    store = open_store(url, create=True)  # creates the schema before the child starts
    script = SCRIPT.format(tests=str(TESTS), started=str(started), budget=BUDGET, url=url,
                           workers=WORKERS)
    child = subprocess.Popen([sys.executable, "-c", script], env={**os.environ},
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"the optimizer ended before the kill: "
                                   f"{child.stderr.read().decode()[-2000:]}")
            if len(_snapshot(store)[1]) >= 60:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("the optimizer wrote fewer than 60 evaluations in 60 s")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL

    candidates, evaluations = _snapshot(store)
    spent_by_killed = len(started.read_text().split())
    in_flight = spent_by_killed - len(evaluations)
    assert 0 <= in_flight <= WORKERS
    killed_row = load_run(store, "killed-run").row
    assert killed_row.status == "running"  # it never got to say goodbye

    forget_store(url)
    store = open_store(url)
    train, val, _test = world()
    evaluator = RuleEvaluator(capacity=2)
    budget = Budget(max_rollouts=BUDGET)
    result = Optimizer.resume("killed-run", evaluator=evaluator,
                              reflection_lm=RuleReflectionLM(), train=train, val=val,
                              budget=budget, store=store).run()

    after_candidates, after_evaluations = _snapshot(store)
    assert after_candidates[:len(candidates)] == candidates
    assert after_evaluations[:len(evaluations)] == evaluations
    assert load_run(store, "killed-run").row.status == "finished"
    assert result.best_val_score > result.seed_val_score
    stored_pairs = {(c, e) for _i, c, e, _s, _f in evaluations}
    keys = {row[0]: row[1] for row in after_candidates}
    assert len(stored_pairs) == len(evaluations)
    spent_by_resumed = sum(evaluator.calls.values())
    assert max(evaluator.calls.values()) == 1
    assert spent_by_killed + spent_by_resumed <= BUDGET + in_flight
    assert len(after_evaluations) == len(evaluations) + spent_by_resumed <= BUDGET
    assert result.totals.rollouts == len(after_evaluations)
    assert keys  # candidates were stored before the kill and survive it
