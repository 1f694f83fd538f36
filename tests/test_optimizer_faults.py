"""Failures are recorded and the run goes on (issue 4, acceptance 5): malformed
reflection replies, replies that drop template variables, evaluator exceptions on single
examples, LLM errors in reflection; and a budget running out during reflection stops the
run cleanly with a result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))

from test_optimizer_engine import run_toy
from test_optimizer_toys import SEED, RuleEvaluator, RuleReflectionLM, world

from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer import (
    CandidateRejected,
    EventLog,
    Optimizer,
    OptimizerConfig,
    OptimizerErrorEvent,
)
from gepa_trace.store import open_store


def _failures(log, kind):
    return [e for e in log.of(OptimizerErrorEvent) if e.kind == kind]


def test_malformed_reflection_replies_are_recorded_and_the_run_goes_on(sqlite_url):
    log = EventLog()
    store = open_store(sqlite_url)
    result, _ev, lm, _b = run_toy(max_rollouts=300, lm=RuleReflectionLM(malformed_every=3),
                                  callbacks=[log], store=store)
    replies = _failures(log, "reflection_reply")
    failures = [e for e in replies if "no fenced block" in e.message]
    assert failures and len(failures) == lm.calls // 3
    rejected = [e for e in log.of(CandidateRejected) if e.candidate_id is None]
    with store.read() as conn:
        stored = [json.loads(p) for (p,) in conn.execute(sa.text(
            "SELECT payload FROM run_events WHERE run_id = :r AND kind = 'proposal_failed'"),
            {"r": result.run_id}).all()]
    # a failure in an iteration planned ahead and never judged is an error, not a verdict
    assert len(rejected) == sum(1 for p in stored if not p.get("ahead")) <= len(replies)
    assert result.totals.reflection_errors == len(replies)
    # the run went on past the failures and still improved after the first one
    first = min(e.iteration for e in failures)
    assert any(c.iteration > first and c.status == "accepted" for c in result.candidates)
    assert result.best_val_score > result.seed_val_score
    reasons = [p["reason"] for p in stored]
    assert sum("no fenced block" in r for r in reasons) == len(failures)


def test_a_reply_that_drops_a_template_variable_is_rejected_with_the_reason():
    log = EventLog()
    result, *_ = run_toy(max_rollouts=300, lm=RuleReflectionLM(drop_variable_every=2),
                         callbacks=[log])
    failures = [e for e in _failures(log, "reflection_reply") if "question" in e.message]
    assert failures
    assert all("drops the template variables ['question']" in e.message for e in failures)
    assert "{question}" in result.best_prompts.instruction("answerer")
    assert result.best_val_score > result.seed_val_score


def test_evaluator_exceptions_are_errors_that_stop_the_run_not_scores(sqlite_url):
    train, _val, _test = world()
    broken = {train[0].id, train[5].id}
    log = EventLog()
    store = open_store(sqlite_url)
    evaluator = RuleEvaluator(fail_ids=broken)
    result, *_ = run_toy(max_rollouts=300, evaluator=evaluator, callbacks=[log], store=store)
    errors = _failures(log, "evaluator")
    assert errors and {e.example_id for e in errors} <= broken
    assert all("retriever crashed" in e.message for e in errors)
    assert result.totals.evaluator_errors == len(errors)
    # retried twice, then the first minibatch that needs it stops the run, loudly
    assert all(n == 3 for (_p, ex), n in evaluator.calls.items() if ex in broken)
    assert result.failed_with and "retriever crashed" in result.failed_with
    assert result.stop_reason.startswith("rollouts kept failing: candidate ")
    with store.read() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM evaluations WHERE run_id = :r AND "
                                    "(error IS NOT NULL OR example_id IN (:a, :b))"),
                            {"r": result.run_id, "a": train[0].id, "b": train[5].id}).all()
        status = conn.execute(sa.text("SELECT status FROM optimization_runs WHERE id = :r"),
                              {"r": result.run_id}).scalar()
    assert rows == [(0,)] and status == "failed"


def test_llm_errors_in_reflection_are_recorded_and_the_run_goes_on():
    log = EventLog()
    result, _ev, lm, _b = run_toy(max_rollouts=300, lm=RuleReflectionLM(error_every=2),
                                  callbacks=[log])
    failures = _failures(log, "reflection_lm")
    assert len(failures) == lm.calls // 2
    assert all("simulated provider error" in e.message for e in failures)
    first = min(e.iteration for e in failures)
    assert any(c.iteration > first and c.status == "accepted" for c in result.candidates)
    assert result.best_val_score > result.seed_val_score


def test_budget_running_out_during_reflection_stops_cleanly():
    train, val, _test = world()
    lm = RuleReflectionLM()
    budget = Budget(max_rollouts=1000, max_llm_calls=3)
    result = Optimizer(RuleEvaluator(), lm, SEED, train, val, budget,
                       config=OptimizerConfig.gepa(seed=1)).run()
    assert result.stop_reason.startswith("max_llm_calls=3 reached")
    assert budget.spent().llm_calls <= 3


@pytest.mark.parametrize("limit", [40, 60, 80])
def test_a_limit_of_llm_calls_covers_the_agents_own_calls_and_the_reflections(limit):
    """The toy agent makes 2 LLM calls a rollout, reported when the rollout ends: the
    rollouts in flight hold that much, so the run never passes the limit."""
    train, val, _test = world()
    lm = RuleReflectionLM()
    budget = Budget(max_rollouts=1000, max_llm_calls=limit)
    result = Optimizer(RuleEvaluator(), lm, SEED, train, val, budget,
                       config=OptimizerConfig.gepa(seed=1, workers=8)).run()
    assert result.stop_reason.startswith(f"max_llm_calls={limit} reached")
    calls = result.totals.llm_calls_by_role
    assert calls["task"] + calls.get("reflection", 0) == budget.spent().llm_calls <= limit
    assert lm.calls >= 1 and result.best_val_score >= result.seed_val_score
