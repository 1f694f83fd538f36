"""The run in the store (SQLite and PostgreSQL): every step committed as it happens,
resume without re-running anything stored, one run per agent at a time, warm start."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))

from test_optimizer_engine import fingerprint, run_toy
from test_optimizer_toys import SEED, RuleEvaluator, RuleReflectionLM, world

from gepa_trace.errors import LockHeld
from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer import Optimizer, load_run
from gepa_trace.store import RunLockRow, open_store


def _rows(store, sql, **params):
    with store.read() as conn:
        return conn.execute(sa.text(sql), params).all()


def test_every_candidate_evaluation_and_front_change_is_stored(store_url):
    store = open_store(store_url)
    result, evaluator, *_ = run_toy(max_rollouts=200, evaluator=RuleEvaluator(capacity=2),
                                    store=store)
    stored = load_run(store, result.run_id)
    assert stored.row.status == "finished" and stored.row.stop_reason == result.stop_reason
    assert stored.row.best_candidate_id == result.best_candidate_id
    assert stored.row.best_val_score == pytest.approx(result.best_val_score)
    assert json.loads(stored.row.config)["seed"] == 1
    assert [(c.id, c.prompts, c.parents, c.origin, c.status, c.diagnosis, c.val_score)
            for c in stored.candidates] == [
        (c.id, c.prompts, c.parents, c.origin, c.status, c.diagnosis, c.val_score)
        for c in result.candidates]
    assert all(c.diagnosis for c in stored.candidates if c.origin == "reflection")
    # one stored evaluation per rollout, never the same (prompts, example) pair twice
    assert len(stored.evaluations) == result.totals.rollouts == sum(evaluator.calls.values())
    pairs = [(stored.candidates[cid].key, ex) for cid, ex, _r in stored.evaluations]
    assert len(pairs) == len(set(pairs))
    # reflection reads the records back after a resume
    assert all(r.records for _c, _e, r in stored.evaluations)
    changes = _rows(store, "SELECT payload FROM run_events WHERE run_id = :r AND "
                           "kind = 'front_changed' ORDER BY seq", r=result.run_id)
    last = {}
    for (payload,) in changes:
        data = json.loads(payload)
        last[data["component"]] = data["versions"]
    assert last == {c: f.versions() for c, f in result.fronts.items()}
    totals = json.loads(stored.row.totals)
    assert totals["rollouts"] == result.totals.rollouts
    assert totals["budget"]["rollouts"] == result.totals.rollouts
    versions = _rows(store, "SELECT count(*) FROM prompt_versions WHERE run_id = :r",
                     r=result.run_id)[0][0]
    assert versions >= len({(c, v) for cand in result.candidates
                            for c, v in cand.prompts.items()}) - len(SEED)


def test_resume_continues_without_rerunning_anything_stored(store_url):
    store = open_store(store_url)
    first, _ev1, *_ = run_toy(max_rollouts=110, evaluator=RuleEvaluator(capacity=2), store=store)
    assert "max_rollouts" in first.stop_reason
    before = load_run(store, first.run_id)
    stored_pairs = {(before.candidates[c].key, e) for c, e, _r in before.evaluations}

    train, val, _test = world()
    ev2 = RuleEvaluator(capacity=2)
    budget = Budget(max_rollouts=260)
    second = Optimizer.resume(first.run_id, evaluator=ev2, reflection_lm=RuleReflectionLM(),
                              train=train, val=val, budget=budget, store=store).run()
    rerun = {(",".join(f"{c}={v}" for c, v in prompts), ex) for prompts, ex in ev2.calls}
    assert ev2.calls and not rerun & stored_pairs
    assert budget.spent().rollouts == len(stored_pairs) + sum(ev2.calls.values()) <= 260
    assert second.totals.rollouts == budget.spent().rollouts
    after = load_run(store, first.run_id)
    assert [c.prompts for c in after.candidates[:len(before.candidates)]] == \
           [c.prompts for c in before.candidates]
    assert second.best_val_score >= first.best_val_score
    assert after.row.status == "finished"

    # and the resumed run is the run an uninterrupted one would have been
    whole, *_ = run_toy(max_rollouts=260, evaluator=RuleEvaluator(capacity=2))
    assert fingerprint(second)[0] == fingerprint(whole)[0]
    assert second.best_prompts == whole.best_prompts


def test_a_second_optimization_of_the_same_agent_is_refused(store_url):
    store = open_store(store_url)
    now = time.time()
    parent = os.getppid()  # a live process that is not us
    with store.write() as conn:
        conn.execute(RunLockRow.__table__.insert().values(
            agent="toy-agent", run_id="other-run", pid=parent, host=socket.gethostname(),
            acquired_at=now, heartbeat_at=now))
    with pytest.raises(LockHeld, match=r"already being optimized by run other-run .*pid"):
        run_toy(max_rollouts=50, store=store)
    # a lock whose heartbeat is stale is taken over
    with store.write() as conn:
        conn.execute(sa.update(RunLockRow.__table__).values(heartbeat_at=now - 3600))
    result, *_ = run_toy(max_rollouts=50, store=store)
    assert result.best_val_score is not None
    assert _rows(store, "SELECT count(*) FROM run_locks")[0][0] == 0  # released


def test_warm_start_seeds_a_new_run_with_the_earlier_fronts(store_url):
    store = open_store(store_url)
    first, *_ = run_toy(max_rollouts=150, evaluator=RuleEvaluator(capacity=2), store=store)
    second, *_ = run_toy(max_rollouts=80, evaluator=RuleEvaluator(capacity=2), store=store,
                         warm_start_from="latest")
    warm = [c for c in second.candidates if c.origin == "warm_start"]
    assert warm and all(c.meta["from_run"] == first.run_id for c in warm)
    front_ids = {m.candidate_id for f in first.fronts.values() for m in f.members}
    assert {c.meta["from_candidate"] for c in warm} <= front_ids
    # the new run starts where the old one ended
    assert max(c.val_score for c in warm) == pytest.approx(first.best_val_score)
    warm_ids = {c.id for c in warm}
    assert any(p.candidate_id in warm_ids and p.best_score == pytest.approx(first.best_val_score)
               for p in second.history)
    assert second.best_val_score >= first.best_val_score
    row = load_run(store, second.run_id).row
    assert row.warm_start_from == "latest"


def test_a_run_stopped_inside_a_lookahead_window_resumes_to_the_same_decisions(store_url,
                                                                               tmp_path):
    from test_optimizer_engine import decisions

    store = open_store(store_url)
    whole = run_toy(max_rollouts=400, evaluator=RuleEvaluator(capacity=1), lookahead=8,
                    seed=2)[0]
    stop = tmp_path / "STOP"

    class StopWhileJudging(RuleEvaluator):
        """Creates the stop file during the minibatch of a child (id >= ``from_id``):
        a window's iterations are judged after their children's minibatches, so in a
        window of several the run stops between two of them, children not yet judged."""

        def __init__(self, from_id: int, **kw):
            super().__init__(**kw)
            self.from_id = from_id

        def evaluate(self, prompts, example, context):
            if context.purpose == "minibatch" and context.candidate_id >= self.from_id:
                stop.touch()
            return super().evaluate(prompts, example, context)

    mid_window = set()
    for from_id in range(8, 30, 3):  # stops at many points, merges tried before some
        first = run_toy(max_rollouts=400, evaluator=StopWhileJudging(from_id, capacity=1),
                        lookahead=8, seed=2, store=store, stop_file=str(stop))[0]
        assert first.stop_reason.startswith("stop file")
        stop.unlink()
        if any(c.status == "proposed" for c in first.candidates):
            mid_window.add(first.iterations)
        train, val, _test = world()
        evaluator = RuleEvaluator(capacity=1)
        resumed = Optimizer.resume(first.run_id, evaluator=evaluator,
                                   reflection_lm=RuleReflectionLM(), train=train, val=val,
                                   budget=Budget(max_rollouts=400), store=store).run()
        assert max(evaluator.calls.values(), default=1) == 1
        assert decisions(resumed) == decisions(whole), f"stopped at {first.iterations}"
    assert len(mid_window) >= 2, "too few stops left a child unjudged"


class _Crash(BaseException):
    """Stands for the process dying: nothing in the optimizer catches it."""


class CrashWhileGuessing(RuleEvaluator):
    """Dies on the first validation rollout after a child was proposed while the
    candidate of iteration ``during`` was being validated (so that child belongs to an
    iteration run on the guess that this candidate would be its parent)."""

    def __init__(self, during: int, **kw):
        super().__init__(**kw)
        self.during = during
        self.validating = False
        self.armed = False

    def on_candidate_accepted(self, event):
        self.validating = event.iteration == self.during

    def on_candidate_validated(self, event):
        self.validating = False

    def on_candidate_proposed(self, event):
        if event.iteration == 0 == self.during:
            self.validating = True  # the seed is validated right after it is proposed
        elif self.validating:
            self.armed = True

    def evaluate(self, prompts, example, context):
        if self.armed and context.purpose == "val":
            raise _Crash()
        return super().evaluate(prompts, example, context)


# (seed, iteration whose accepted child is validated when the process dies, what
# becomes of the child proposed on the guess that it is the next parent): with seed 2
# the seed's guess holds; with seed 6 the guess after iteration 3 is wrong
@pytest.mark.parametrize("seed, during, fate", [(2, 0, "adopted"), (6, 3, "superseded")])
def test_a_run_killed_while_a_guessed_iteration_runs_resumes_to_the_same_decisions(
        store_url, seed, during, fate):
    from test_optimizer_engine import decisions

    store = open_store(store_url)
    whole = run_toy(max_rollouts=300, evaluator=RuleEvaluator(capacity=1), seed=seed)[0]
    crashing = CrashWhileGuessing(during, capacity=1, latency_s=0.002)
    with pytest.raises(_Crash):
        run_toy(max_rollouts=300, evaluator=crashing, seed=seed, workers=1, store=store,
                callbacks=[crashing])
    (run_id,) = [r for (r,) in _rows(store, "SELECT id FROM optimization_runs")]
    guessed = [c for c in load_run(store, run_id).candidates if c.status == "speculative"]
    assert len(guessed) == 1, "no child was proposed on a guess before the crash"
    train, val, _test = world()
    evaluator = RuleEvaluator(capacity=1)
    resumed = Optimizer.resume(run_id, evaluator=evaluator,
                               reflection_lm=RuleReflectionLM(), train=train, val=val,
                               budget=Budget(max_rollouts=300), store=store).run()
    assert max(evaluator.calls.values(), default=1) == 1  # nothing stored is run again
    # the same decisions to the end: rollouts queued but never run when the process
    # died are not counted as spent
    assert decisions(resumed) == decisions(whole)
    assert resumed.totals.rollouts == whole.totals.rollouts
    # the child proposed on the guess is judged if the guess held, else superseded
    status = resumed.candidates[guessed[0].id].status
    assert (status == "superseded") == (fate == "superseded"), status


class CrashWhileGrowing(RuleEvaluator):
    """Dies on the first validation rollout of a training example once validation has
    grown ``after`` times: inside the growth that follows."""

    def __init__(self, after: int, **kw):
        super().__init__(**kw)
        self.after = after
        self.grown = 0

    def on_validation_grown(self, event):
        self.grown += 1

    def evaluate(self, prompts, example, context):
        if (context.purpose == "val" and example.id.startswith("t")
                and self.grown == self.after):
            raise _Crash()
        return super().evaluate(prompts, example, context)


# killed inside the first growth (nothing of it recorded yet), and inside the second
# (the first is part of the stored run and must be restored)
@pytest.mark.parametrize("after", [0, 1])
def test_a_run_killed_while_validation_grows_resumes_to_the_same_run(store_url, after):
    from test_optimizer_engine import decisions, narrow_world, run_narrow

    store = open_store(store_url)
    whole = run_narrow()
    crashing = CrashWhileGrowing(after)
    with pytest.raises(_Crash):
        run_narrow(evaluator=crashing, workers=1, store=store, callbacks=[crashing])
    (run_id,) = [r for (r,) in _rows(store, "SELECT id FROM optimization_runs")]
    train, val, _test = narrow_world()
    evaluator = RuleEvaluator()
    resumed = Optimizer.resume(run_id, evaluator=evaluator, reflection_lm=RuleReflectionLM(),
                               train=train, val=val, budget=Budget(max_rollouts=400),
                               store=store).run()
    assert max(evaluator.calls.values(), default=1) == 1  # nothing stored is run again
    assert resumed.val_size == whole.val_size
    assert decisions(resumed) == decisions(whole)
    assert resumed.best_prompts.versions() == whole.best_prompts.versions()


def test_resuming_a_grown_run_on_a_dataset_without_its_examples_is_refused(store_url):
    from test_optimizer_engine import narrow_world, run_narrow

    from gepa_trace.errors import ConfigError

    store = open_store(store_url)
    first = run_narrow(store=store)
    assert first.val_grown_by > 0
    train, val, _test = narrow_world()
    with pytest.raises(ConfigError, match="grew its validation set with examples this "
                                          "dataset lacks: t"):
        Optimizer.resume(first.run_id, evaluator=RuleEvaluator(),
                         reflection_lm=RuleReflectionLM(), train=train[:5], val=val,
                         budget=Budget(max_rollouts=400), store=store)
