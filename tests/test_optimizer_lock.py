"""The run lock (SQLite and PostgreSQL): a live run keeps its agent's lock however far
apart its checkpoints are, its heartbeat thread ends with it, and a run whose lock is
taken over stops at its next safe point with everything it recorded kept.

Waits are on events or on polled conditions with generous limits, never on how long
something took, so a loaded machine makes these tests slower, not flaky."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))

from test_optimizer_engine import decisions, run_toy
from test_optimizer_toys import SEED, RuleEvaluator, RuleReflectionLM, world

from gepa_trace.errors import ConfigError, LockHeld
from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer import Optimizer, OptimizerConfig, load_run
from gepa_trace.optimizer.lock import RunLock, renew_every
from gepa_trace.store import RunLockRow, open_store

LOCKS = RunLockRow.__table__
PATIENCE_S = 30.0  # how long a test waits for something that takes well under a second


def lock_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gepa-run-lock")]


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def lock_row(store):
    with store.read() as conn:
        return conn.execute(sa.select(LOCKS).where(LOCKS.c.agent == "toy-agent")).first()


class GatedEvaluator(RuleEvaluator):
    """Holds its first rollout until ``release`` is set: a step that takes as long as
    the test wants, like a validation at real LLM latency."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.started = threading.Event()
        self.release = threading.Event()

    def evaluate(self, prompts, example, context):
        if not self.started.is_set():
            self.started.set()
            self.release.wait(PATIENCE_S)
        return super().evaluate(prompts, example, context)


def test_a_live_run_keeps_its_lock_past_stale_seconds_while_its_checkpoints_are_far_apart(
        store_url):
    store = open_store(store_url)
    stale = 1.0
    evaluator = GatedEvaluator(capacity=2)
    outcome = {}
    first = threading.Thread(target=lambda: outcome.update(result=run_toy(
        max_rollouts=60, evaluator=evaluator, store=store, lock_stale_seconds=stale)[0]))
    first.start()
    try:
        assert evaluator.started.wait(PATIENCE_S)
        # the run is inside its seed validation: no checkpoint since it took the lock.
        # Let three stale periods pass; only the heartbeat thread can keep the lock.
        taken_at = lock_row(store).acquired_at
        time.sleep(3 * stale)
        assert time.time() - taken_at > 2 * stale
        # a second run, in another process (a live pid that is not ours), is refused
        script = textwrap.dedent(f"""
            from gepa_trace.errors import LockHeld
            from gepa_trace.optimizer.lock import RunLock
            from gepa_trace.store import open_store
            try:
                RunLock(open_store({store_url!r}), "toy-agent", "second-run",
                        {stale!r}).acquire()
            except LockHeld as exc:
                print("REFUSED", exc)
            else:
                print("TOOK THE LOCK")
        """)
        second = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=120, check=False,
                                env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        assert second.stdout.startswith("REFUSED"), second.stdout + second.stderr
        assert "already being optimized by run run-" in second.stdout
    finally:
        evaluator.release.set()
        first.join(PATIENCE_S * 4)
    result = outcome["result"]
    assert "max_rollouts" in result.stop_reason and result.best_val_score is not None
    assert lock_row(store) is None  # released at the end
    assert not lock_threads()


def test_the_heartbeat_thread_ends_when_the_run_ends(store_url):
    store = open_store(store_url)
    assert not lock_threads()
    run_toy(max_rollouts=40, store=store, lock_stale_seconds=1.0)
    assert not lock_threads()

    class Crash:
        def on_iteration_started(self, event):
            raise RuntimeError("callback crashed")

    # a run that ends with an exception stops its heartbeat too, and gives the lock back
    with pytest.raises(RuntimeError, match="callback crashed"):
        run_toy(max_rollouts=40, store=store, lock_stale_seconds=1.0, callbacks=[Crash()])
    assert not lock_threads()
    assert lock_row(store) is None
    with pytest.raises(ValueError, match="inside"), RunLock(store, "toy-agent", "direct", 1.0):
        assert len(lock_threads()) == 1
        raise ValueError("inside")
    assert not lock_threads() and lock_row(store) is None


class TakenOver(RuleEvaluator):
    """At its ``after``-th rollout, another run takes the agent's lock over (its row is
    rewritten as a stale-lock take-over does, naming a live process that is not us);
    that rollout then waits until the run has noticed, so the run's next safe point is
    the one that must stop it, whatever the machine's load."""

    def __init__(self, store, after: int, **kwargs):
        super().__init__(**kwargs)
        self.store = store
        self.after = after
        self.optimizer: Optimizer | None = None
        self.count = 0
        self.guard = threading.Lock()

    def evaluate(self, prompts, example, context):
        with self.guard:
            self.count += 1
            now_it_is = self.count == self.after
        if now_it_is:
            with self.store.write() as conn:
                conn.execute(sa.update(LOCKS).where(LOCKS.c.agent == "toy-agent").values(
                    run_id="intruder", pid=os.getppid(), host=socket.gethostname(),
                    acquired_at=time.time(), heartbeat_at=time.time()))
            wait_until(lambda: self.optimizer.lock_lost is not None, "the lock to be lost")
        return super().evaluate(prompts, example, context)


def test_a_run_whose_lock_is_taken_over_stops_at_the_next_safe_point_and_keeps_its_records(
        store_url):
    store = open_store(store_url)
    train, val, _test = world()
    evaluator = TakenOver(store, after=30, capacity=2)
    opt = Optimizer(evaluator, RuleReflectionLM(), SEED, train, val, Budget(max_rollouts=260),
                    store=store, agent="toy-agent",
                    config=OptimizerConfig.gepa(seed=1, lock_stale_seconds=1.0))
    evaluator.optimizer = opt
    result = opt.run()

    reason = (f"the run lock of agent 'toy-agent' was taken by run intruder (pid "
              f"{os.getppid()} on {socket.gethostname()}); stopping so that two runs do "
              "not write one agent's fronts")
    assert opt.lock_lost == reason and result.stop_reason == reason
    assert result.totals.rollouts < 260  # it stopped long before its budget
    assert not lock_threads()
    # the intruder's lock is left alone; what the run did is all stored
    assert lock_row(store).run_id == "intruder"
    stored = load_run(store, result.run_id)
    assert stored.row.status == "stopped" and stored.row.stop_reason == reason
    assert len(stored.evaluations) == result.totals.rollouts
    assert [c.prompts for c in stored.candidates] == [c.prompts for c in result.candidates]

    # once the other run is done, it resumes to the run it would have been
    with store.write() as conn:
        conn.execute(sa.delete(LOCKS))
    again = RuleEvaluator(capacity=2)
    resumed = Optimizer.resume(result.run_id, evaluator=again,
                               reflection_lm=RuleReflectionLM(), train=train, val=val,
                               budget=Budget(max_rollouts=260), store=store).run()
    kept = {(stored.candidates[c].key, e) for c, e, _r in stored.evaluations}
    rerun = {(",".join(f"{c}={v}" for c, v in prompts), e) for prompts, e in again.calls}
    assert again.calls and not rerun & kept  # nothing it recorded is run again
    whole, *_ = run_toy(max_rollouts=260, evaluator=RuleEvaluator(capacity=2))
    assert decisions(resumed) == decisions(whole)
    assert load_run(store, result.run_id).row.status == "finished"


def test_a_lock_row_deleted_under_a_run_is_reported_lost(store_url):
    store = open_store(store_url)
    lock = RunLock(store, "toy-agent", "run-a", 1.0)
    lock.acquire()
    try:
        with store.write() as conn:
            conn.execute(sa.delete(LOCKS))
        wait_until(lambda: lock.lost is not None, "the lock to be lost")
        assert lock.lost == ("the run lock of agent 'toy-agent' was deleted from the store; "
                             "stopping so that two runs do not write one agent's fronts")
        wait_until(lambda: not lock_threads(), "the heartbeat thread to stop")
    finally:
        lock.release()
    assert lock_row(store) is None  # a lost lock is never taken back behind our back


def test_a_heartbeat_that_cannot_be_written_for_half_the_stale_time_loses_the_lock(
        store_url, caplog):
    store = open_store(store_url)
    lock = RunLock(store, "toy-agent", "run-a", 1.0)
    lock.acquire()
    try:
        # a real database error on every renewal: the table is not there
        with store.write() as conn:
            conn.execute(sa.text("ALTER TABLE run_locks RENAME TO run_locks_away"))
        wait_until(lambda: lock.lost is not None, "the lock to be lost")
        assert lock.lost.startswith("the run lock of agent 'toy-agent' could not be "
                                    "renewed for ")
        assert "another run may take it over after 1s" in lock.lost
        # the thread lived through several failed renewals, and said so once
        failures = [r for r in caplog.records if "cannot renew the run lock" in r.message]
        assert len(failures) == 1
        wait_until(lambda: not lock_threads(), "the heartbeat thread to stop")
    finally:
        with store.write() as conn:
            conn.execute(sa.text("ALTER TABLE run_locks_away RENAME TO run_locks"))
        lock.release()
    assert lock_row(store) is None


def test_a_second_run_in_the_same_process_is_refused_while_the_first_holds_the_lock(
        store_url):
    store = open_store(store_url)
    with RunLock(store, "toy-agent", "run-a", 300.0):
        with pytest.raises(LockHeld, match="already being optimized by run run-a"):
            RunLock(store, "toy-agent", "run-b", 300.0).acquire()
        assert lock_row(store).run_id == "run-a"
    assert not lock_threads()
    # a row this process left behind (its release failed) is taken back by a new run
    now = time.time()
    with store.write() as conn:
        conn.execute(LOCKS.insert().values(agent="toy-agent", run_id="left-over",
                                           pid=os.getpid(), host=socket.gethostname(),
                                           acquired_at=now, heartbeat_at=now))
    with RunLock(store, "toy-agent", "run-b", 300.0):
        assert lock_row(store).run_id == "run-b"


def test_the_heartbeat_period_follows_stale_seconds_within_bounds():
    assert renew_every(300.0) == 30.0
    assert renew_every(100.0) == 10.0
    assert renew_every(3600.0) == 30.0  # a renewal is cheap; losing the lock is learnt soon
    assert renew_every(0.1) == 0.05  # a tiny test value does not spin on the database


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "300"])
def test_a_lock_stale_time_that_is_not_a_positive_number_is_refused(bad):
    with pytest.raises(ConfigError, match="lock_stale_seconds must be a number > 0"):
        OptimizerConfig(lock_stale_seconds=bad).validate()
