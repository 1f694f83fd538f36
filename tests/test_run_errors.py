"""Errors are not scores (issue 16): a rollout that fails is retried, never stored, cached
or reflected on as a score; a decision that needs one stops the run with ``failed_with``,
and the run resumes, once the cause is gone, to the run that never failed."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))

from test_optimizer_engine import decisions, run_toy
from test_optimizer_toys import SEED, RuleEvaluator, RuleReflectionLM, world

from gepa_trace.errors import LMError, MetricContractError, StoreError
from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer import (
    Example,
    Optimizer,
    OptimizerConfig,
    RolloutContext,
    load_run,
)
from gepa_trace.optimizer.failures import is_permanent
from gepa_trace.optimizer.persistence import write_retrying
from gepa_trace.optimizer.processes import RemoteError
from gepa_trace.prompts import PromptSet
from gepa_trace.store import forget_store, open_store

BUDGET = 300


class Outage(RuleEvaluator):
    """The task model goes down after ``after`` rollouts (attempts) and stays down: every
    later attempt raises what ``gepa_trace.lm.LM`` raises when its own retries are spent."""

    def __init__(self, after: int, **kw):
        super().__init__(**kw)
        self.after = after
        self.started = 0
        self._count = threading.Lock()

    def evaluate(self, prompts, example, context):
        with self._count:
            self.started += 1
            down = self.started > self.after
        if down:
            raise LMError("LLM call to gepa-sim/task failed after 7 attempts: "
                          "InternalServerError (HTTP 500): task model down")
        return super().evaluate(prompts, example, context)


def _val_scores(store, run_id, candidate_id):
    with store.read() as conn:
        return dict(conn.execute(sa.text(
            "SELECT example_id, score FROM evaluations WHERE run_id = :r AND "
            "candidate_id = :c AND purpose = 'val'"), {"r": run_id, "c": candidate_id}).all())


def _resume(store, run_id, evaluator):
    train, val, _test = world()
    return Optimizer.resume(run_id, evaluator=evaluator, reflection_lm=RuleReflectionLM(),
                            train=train, val=val, budget=Budget(max_rollouts=BUDGET),
                            store=store).run()


# the outage starts at the seed's validation, in a merge, in minibatches, in validations,
# in the middle of lookahead windows (a narrow and a wide one), near the budget's end
@pytest.mark.parametrize("after, lookahead", [(5, 4), (60, 4), (100, 4), (140, 4),
                                              (180, 4), (230, 4), (270, 4),
                                              (70, 8), (150, 8), (210, 8)])
def test_a_run_whose_task_model_goes_down_stops_and_resumes_to_the_run_that_never_failed(
        store_url, tmp_path, after, lookahead):
    clean_url = f"sqlite:///{tmp_path / 'clean.db'}"
    clean_store = open_store(clean_url, create=True)
    whole = run_toy(max_rollouts=BUDGET, evaluator=RuleEvaluator(capacity=1), seed=2,
                    store=clean_store, lookahead=lookahead)[0]
    assert whole.failed_with is None

    store = open_store(store_url)
    first = run_toy(max_rollouts=BUDGET, evaluator=Outage(after, capacity=1), seed=2,
                    store=store, lookahead=lookahead)[0]
    assert first.failed_with and "task model down" in first.failed_with
    assert first.failed_with.startswith("candidate ")
    assert first.stop_reason == f"rollouts kept failing: {first.failed_with}"
    assert first.totals.evaluator_errors >= 1
    assert first.totals.rollout_retries >= 2 * first.totals.evaluator_errors
    assert first.totals.first_error and "task model down" in first.totals.first_error
    summary = first.summary()
    assert summary["failed_with"] == first.failed_with
    assert summary["errors"]["evaluator_errors"] == first.totals.evaluator_errors
    stored = load_run(store, first.run_id)
    assert stored.row.status == "failed"
    # no failure is an evaluation: nothing a later decision could read as a score
    assert all(r.error is None for _c, _e, r in stored.evaluations)
    with store.read() as conn:
        failed = [json.loads(p) for (p,) in conn.execute(sa.text(
            "SELECT payload FROM run_events WHERE run_id = :r AND kind = 'rollout_failed'"),
            {"r": first.run_id}).all()]
    assert len(failed) == first.totals.evaluator_errors
    assert all(f["attempts"] == 3 and "task model down" in f["error"] for f in failed)

    healed = RuleEvaluator(capacity=1)
    resumed = _resume(store, first.run_id, healed)
    assert resumed.failed_with is None
    assert max(healed.calls.values(), default=1) == 1  # nothing stored is run again
    assert decisions(resumed) == decisions(whole)
    assert resumed.best_prompts.versions() == whole.best_prompts.versions()
    assert resumed.best_val_score == whole.best_val_score
    assert resumed.stop_reason == whole.stop_reason
    best_by_prompts = {c.key: c.id for c in resumed.candidates}
    whole_best = whole.candidates[whole.best_candidate_id]
    assert _val_scores(store, resumed.run_id, best_by_prompts[whole_best.key]) == \
        _val_scores(clean_store, whole.run_id, whole.best_candidate_id)
    assert load_run(store, first.run_id).row.status == "finished"
    forget_store(clean_url)


class FailWhileGuessing(RuleEvaluator):
    """Fails every attempt of the parent minibatch of the iteration run on the guess that
    the child of iteration ``during`` (the seed for 0) is its parent. Keyed on the
    engine's own events and the rollout's candidate, never on timing: the guessed
    iteration is announced before its rollouts are submitted, and that child is
    validated only after they ran (one worker runs them before its validation)."""

    def __init__(self, during: int, **kw):
        super().__init__(**kw)
        self.during = during
        self.child = 0 if during == 0 else None
        self.guessed: int | None = None

    def on_candidate_proposed(self, event):
        if event.iteration == self.during:
            self.child = event.candidate_id

    def on_iteration_started(self, event):
        if (event.ahead and event.iteration == self.during + 1
                and event.parent_id == self.child):
            self.guessed = self.child

    def on_candidate_validated(self, event):
        if event.candidate_id == self.guessed:
            self.guessed = None

    def evaluate(self, prompts, example, context):
        if context.purpose == "minibatch" and context.candidate_id == self.guessed:
            raise RuntimeError("task model down")
        return super().evaluate(prompts, example, context)


# with seed 6 the guess made while iteration 3's child is validated is wrong: no decision
# needs its failed minibatch, and the run goes on; with seed 2 the seed's guess holds
@pytest.mark.parametrize("seed, during, stops", [(6, 3, False), (2, 0, True)])
def test_a_failure_in_work_run_on_a_guess_stops_the_run_only_if_a_decision_needs_it(
        sqlite_url, seed, during, stops):
    whole = run_toy(max_rollouts=BUDGET, evaluator=RuleEvaluator(capacity=1), seed=seed)[0]
    store = open_store(sqlite_url)
    failing = FailWhileGuessing(during, capacity=1)
    first = run_toy(max_rollouts=BUDGET, evaluator=failing, seed=seed, workers=1,
                    store=store, callbacks=[failing])[0]
    assert first.totals.evaluator_errors >= 1
    assert (first.failed_with is not None) == stops
    if stops:
        first = _resume(store, first.run_id, RuleEvaluator(capacity=1))
    assert first.failed_with is None
    assert decisions(first) == decisions(whole)
    assert first.best_prompts.versions() == whole.best_prompts.versions()


def test_a_run_whose_every_rollout_fails_stops_at_the_seeds_validation(sqlite_url):
    store = open_store(sqlite_url)
    evaluator = Outage(0)
    result, *_ = run_toy(max_rollouts=BUDGET, evaluator=evaluator, store=store)
    _train, val, _test = world()
    assert result.failed_with == (
        "candidate 0 on example v0: gepa_trace.errors.LMError: LLM call to gepa-sim/task "
        "failed after 7 attempts: InternalServerError (HTTP 500): task model down")
    assert result.stop_reason.startswith("rollouts kept failing: candidate 0 on example v0")
    assert [c.origin for c in result.candidates] == ["seed"]
    assert result.best_val_score is None and result.seed_val_score is None
    # each tried, then retried twice: the validation, and the minibatch run meanwhile on
    # the guess that the seed is the next parent (its failure alone stops nothing)
    minibatch = OptimizerConfig.gepa().minibatch_size
    assert evaluator.started == 3 * (len(val) + minibatch)
    assert result.totals.evaluator_errors == len(val) + minibatch
    assert result.totals.rollout_retries == 2 * (len(val) + minibatch)
    assert load_run(store, result.run_id).evaluations == []


class Flaky(RuleEvaluator):
    """A transient error: the first attempt of every third (prompts, example) pair
    fails with a broken connection; the retry succeeds."""

    def evaluate(self, prompts, example, context):
        key = (tuple(sorted(prompts.versions().items())), example.id)
        first_try = self.calls[key] == 0
        if first_try and int(hashlib.sha256(repr(key).encode()).hexdigest(), 16) % 3 == 0:
            self.calls[key] += 1
            raise ConnectionError("connection reset by peer")
        return super().evaluate(prompts, example, context)


def test_a_transient_error_healed_by_the_retry_gives_the_run_without_errors():
    clean = run_toy(max_rollouts=BUDGET, evaluator=RuleEvaluator(capacity=1), seed=2)[0]
    flaky = Flaky(capacity=1)
    result = run_toy(max_rollouts=BUDGET, evaluator=flaky, seed=2)[0]
    assert result.failed_with is None and result.totals.evaluator_errors == 0
    assert result.totals.rollout_retries > 0
    assert sum(1 for n in flaky.calls.values() if n == 2) == result.totals.rollout_retries
    assert decisions(result) == decisions(clean)
    assert [c.diagnosis for c in result.candidates] == [c.diagnosis for c in clean.candidates]
    assert result.best_prompts.versions() == clean.best_prompts.versions()
    assert result.totals.rollouts == clean.totals.rollouts
    assert result.stop_reason == clean.stop_reason


def test_an_auth_error_is_not_retried():
    import litellm

    class BadKey(RuleEvaluator):
        def evaluate(self, prompts, example, context):
            self.calls[example.id] += 1
            try:
                raise litellm.AuthenticationError(message="Missing credentials",
                                                  llm_provider="openai", model="gpt-4.1")
            except litellm.AuthenticationError as exc:
                raise LMError("LLM call to openai/gpt-4.1 failed with AuthenticationError "
                              "(HTTP 401), which retrying cannot fix") from exc

    evaluator = BadKey()
    result = run_toy(max_rollouts=BUDGET, evaluator=evaluator)[0]
    assert "HTTP 401" in result.failed_with
    assert set(evaluator.calls.values()) == {1}
    assert result.totals.rollout_retries == 0


def test_what_a_retry_cannot_fix_is_told_apart_from_what_it_can():
    import litellm

    auth = litellm.AuthenticationError(message="bad key", llm_provider="openai", model="m")
    missing = litellm.NotFoundError(message="no such model", llm_provider="openai", model="m")
    limited = litellm.RateLimitError(message="slow down", llm_provider="openai", model="m")
    for exc, permanent in [(auth, True), (missing, True), (limited, False),
                           (RuntimeError("task model down"), False),
                           (ConnectionError("reset"), False),
                           (MetricContractError("the metric returned str 'x'"), True),
                           (RemoteError("Traceback...\nAuthenticationError: bad key", True), True),
                           (RemoteError("Traceback...\nValueError: flaky"), False)]:
        assert is_permanent(exc) is permanent, exc
    try:
        try:
            raise auth
        except litellm.AuthenticationError as inner:
            raise LMError("LLM call failed") from inner
    except LMError as chained:
        assert is_permanent(chained)


# ---------------------------------------------------------------- the metric contract

def _constant_agent(prompts: PromptSet):
    from langchain_core.runnables import RunnableLambda

    return RunnableLambda(lambda inputs: f"answer to {inputs['question']}")


@pytest.mark.parametrize("value, says", [("x", "returned str 'x'"),
                                         (7.0, "score 7.0, outside the score range"),
                                         (float("nan"), "outside the score range")])
def test_a_metric_that_breaks_its_contract_is_an_error_not_a_score(value, says):
    from gepa_trace.demo.evaluator import AgentEvaluator

    calls = []

    def metric(example, output, trace):
        calls.append(example.id)
        return value

    evaluator = AgentEvaluator(_constant_agent, metric)
    example = Example("e1", {"question": "q?"})
    rollout = evaluator.evaluate(SEED, example, RolloutContext("run", 0, "val"))
    assert rollout.error and says in rollout.error and rollout.permanent
    assert rollout.feedback == ""  # nothing for the reflection LM to read as feedback

    train, val, _test = world()
    calls.clear()
    result = Optimizer(evaluator, RuleReflectionLM(), SEED, train, val,
                       Budget(max_rollouts=BUDGET), config=OptimizerConfig.gepa(seed=1)).run()
    assert result.failed_with and says in result.failed_with
    assert result.best_val_score is None
    # a broken contract is not retried: one call per example (the validation, and the
    # minibatch run meanwhile on the guess that the seed is the next parent)
    assert set(val_ids := [e.id for e in val]) <= set(calls)
    assert len(calls) == len(set(calls)) == len(val_ids) + OptimizerConfig.gepa().minibatch_size


def test_a_metric_on_a_wider_scale_is_held_to_the_runs_score_range():
    from gepa_trace.demo.evaluator import AgentEvaluator

    evaluator = AgentEvaluator(_constant_agent, lambda example, output, trace: 7.0)
    rollout = evaluator.evaluate(SEED, Example("e1", {"question": "q?"}),
                                 RolloutContext("run", 0, "val", (0.0, 10.0)))
    assert rollout.error is None and rollout.score == 7.0


def test_an_agent_or_metric_exception_is_never_feedback():
    from gepa_trace.demo.evaluator import AgentEvaluator

    def broken_agent(prompts):
        from langchain_core.runnables import RunnableLambda

        def run(inputs):
            raise RuntimeError("task model down")
        return RunnableLambda(run)

    def broken_metric(example, output, trace):
        return {"score": 1}["feedback"]

    context = RolloutContext("run", 0, "val")
    example = Example("e1", {"question": "q?"})
    agent_failed = AgentEvaluator(broken_agent, lambda *a: 1.0).evaluate(SEED, example, context)
    assert agent_failed.error == "the agent raised RuntimeError: task model down"
    assert agent_failed.feedback == "" and not agent_failed.permanent
    metric_failed = AgentEvaluator(_constant_agent, broken_metric).evaluate(SEED, example,
                                                                            context)
    assert metric_failed.error == "the metric raised KeyError: 'feedback'"
    assert metric_failed.feedback == ""


# ---------------------------------------------------------------- a busy store

def _hold_lock(path: str, seconds: float) -> threading.Thread:
    """Another process's writer: an exclusive SQLite transaction held for ``seconds``."""
    ready = threading.Event()

    def hold():
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        ready.set()
        threading.Event().wait(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    ready.wait(10)
    return thread


def test_a_write_that_finds_the_database_locked_is_retried_then_named(tmp_path, monkeypatch):
    monkeypatch.setenv("GEPA_TRACE_SQLITE_BUSY_MS", "20")
    path = tmp_path / "busy.db"
    url = f"sqlite:///{path}"
    store = open_store(url, create=True)
    try:
        rows = []
        holder = _hold_lock(str(path), 0.4)  # shorter than the retries' pauses
        write_retrying(store, "save an evaluation", lambda conn: rows.append(
            conn.execute(sa.text("SELECT 1")).scalar()))
        holder.join()
        assert rows == [1]
        holder = _hold_lock(str(path), 5.0)  # longer than all of them
        with pytest.raises(StoreError, match=r"cannot save an evaluation after 5 tries: "
                                             r"database is locked"):
            write_retrying(store, "save an evaluation",
                           lambda conn: conn.execute(sa.text("SELECT 1")))
        holder.join()
    finally:
        forget_store(url)


def test_a_database_locked_while_evaluations_are_saved_does_not_stop_the_run(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("GEPA_TRACE_SQLITE_BUSY_MS", "20")
    path = tmp_path / "busy.db"
    url = f"sqlite:///{path}"
    store = open_store(url, create=True)

    class LocksTheStore(RuleEvaluator):
        """Another writer takes the database for a moment, three times in the run."""

        def evaluate(self, prompts, example, context):
            rollout = super().evaluate(prompts, example, context)
            if sum(self.calls.values()) in (15, 80, 150):
                _hold_lock(str(path), 0.5)
            return rollout

    try:
        clean = run_toy(max_rollouts=200, evaluator=RuleEvaluator(capacity=1), seed=2)[0]
        result = run_toy(max_rollouts=200, evaluator=LocksTheStore(capacity=1), seed=2,
                         store=store)[0]
        assert result.failed_with is None
        assert decisions(result) == decisions(clean)
        assert len(load_run(store, result.run_id).evaluations) == result.totals.rollouts
    finally:
        forget_store(url)


# ---------------------------------------------------------------- the demo agent, offline

class TaskModelGoesDown:
    """A callback that turns on the simulated provider's fault injection for every
    later task call (HTTP 500 each time) once ``after`` candidates are validated."""

    def __init__(self, monkeypatch, after: int):
        self.monkeypatch = monkeypatch
        self.after = after
        self.validated = 0

    def on_candidate_validated(self, event):
        self.validated += 1
        if self.validated == self.after:
            self.monkeypatch.setenv("GEPA_SIM_FAULTS", "server_error=1")


def _demo(store, monkeypatch=None, down_after=None, resume=None):
    from gepa_trace.demo import SEED_PROMPTS, build_agent, metric, questions
    from gepa_trace.demo.evaluator import AgentEvaluator
    from gepa_trace.lm import LM
    from gepa_trace.lm.chat_model import LiteLLMChatModel

    budget = Budget(max_rollouts=110)
    # the task model's own retries off, so an outage costs no backoff pauses here
    task = LiteLLMChatModel(model="gepa-sim/task",
                            lm=LM("gepa-sim/task", max_retries=0, backoff_s=0.0))
    evaluator = AgentEvaluator(build_agent, metric, chat_model=task)
    reflection = LM("gepa-sim/reflect", budget=budget, role="reflection")
    train, val = questions(15, seed=11), questions(8, seed=12)
    if resume is not None:
        return Optimizer.resume(resume, evaluator=evaluator, reflection_lm=reflection,
                                train=train, val=val, budget=budget, store=store).run()
    callbacks = [TaskModelGoesDown(monkeypatch, down_after)] if down_after else []
    return Optimizer(evaluator, reflection, SEED_PROMPTS, train, val, budget, store=store,
                     agent="demo-qa", config=OptimizerConfig.gepa(seed=0, workers=4),
                     callbacks=callbacks).run()


@pytest.mark.parametrize("down_after", [1, 2, 3])
def test_the_demo_agents_task_model_going_down_mid_run_stops_it_and_resume_finishes_it(
        tmp_path, monkeypatch, down_after):
    pytest.importorskip("langgraph")
    monkeypatch.delenv("GEPA_SIM_FAULTS", raising=False)
    clean_url, url = f"sqlite:///{tmp_path / 'clean.db'}", f"sqlite:///{tmp_path / 'down.db'}"
    try:
        clean_store, store = open_store(clean_url, create=True), open_store(url, create=True)
        whole = _demo(clean_store)
        assert whole.failed_with is None and whole.best_val_score > whole.seed_val_score

        first = _demo(store, monkeypatch, down_after=down_after)
        assert first.failed_with and "InternalServerError" in first.failed_with
        assert first.stop_reason.startswith("rollouts kept failing: candidate ")
        assert all(r.error is None for _c, _e, r in load_run(store, first.run_id).evaluations)

        monkeypatch.delenv("GEPA_SIM_FAULTS")  # the provider is back
        resumed = _demo(store, resume=first.run_id)
        assert resumed.failed_with is None
        assert decisions(resumed) == decisions(whole)
        assert resumed.best_prompts.versions() == whole.best_prompts.versions()
        whole_best = whole.candidates[whole.best_candidate_id]
        best = {c.key: c.id for c in resumed.candidates}[whole_best.key]
        assert _val_scores(store, resumed.run_id, best) == \
            _val_scores(clean_store, whole.run_id, whole.best_candidate_id)
    finally:
        forget_store(clean_url)
        forget_store(url)


def test_a_budget_spent_inside_the_agent_stops_the_run_and_is_no_error():
    from langchain_core.runnables import RunnableLambda

    from gepa_trace.demo.evaluator import AgentEvaluator
    from gepa_trace.lm import LM

    budget = Budget(max_rollouts=BUDGET, max_llm_calls=20)
    judge = LM("gepa-sim/echo", budget=budget, role="judge")

    def agent(prompts):
        return RunnableLambda(lambda inputs: judge(inputs["question"]))

    evaluator = AgentEvaluator(agent, lambda example, output, trace: 1.0)
    train, val, _test = world()
    result = Optimizer(evaluator, RuleReflectionLM(), SEED, train, val, budget,
                       config=OptimizerConfig.gepa(seed=1)).run()
    assert result.failed_with is None and result.totals.evaluator_errors == 0
    assert "max_llm_calls=20" in result.stop_reason
