"""The held-out test keeps the loop's contract: an error is never a score.

The evaluator here is a real ``Evaluator``: it scores by a table and fails on the
attempts it is told to, the way an agent behind a flaky or broken endpoint does.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from gepa_trace.errors import BudgetExhausted
from gepa_trace.optimizer.protocols import Example, Rollout, RolloutContext
from gepa_trace.optimizer.result import OptimizationResult, Totals
from gepa_trace.optimizer.state import Candidate
from gepa_trace.prompts import PromptSet
from gepa_trace.replay.heldout import HELD_OUT_ATTEMPTS, evaluate_held_out

SEED = PromptSet({"answerer": "Answer the question."}, agent="toy")
BEST = PromptSet({"answerer": "Answer the question with the city's name only."}, agent="toy")
TEST = [Example(id=f"t{i}", inputs={"question": f"q{i}"}, split="test") for i in range(6)]


class TableEvaluator:
    """Seed scores 0, best scores 1; ``failures[example_id]`` attempts fail first (or
    forever with -1); ``score`` overrides what every rollout returns."""

    def __init__(self, failures: dict[str, int] | None = None, score: float | None = None,
                 raises: BaseException | None = None):
        self.failures = dict(failures or {})
        self.score = score
        self.raises = raises
        self.attempts: Counter[tuple[int, str]] = Counter()
        self._lock = threading.Lock()

    def evaluate(self, prompts: PromptSet, example: Example,
                 context: RolloutContext) -> Rollout:
        key = (context.candidate_id, example.id)
        with self._lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
        if self.raises is not None:
            raise self.raises
        failing = self.failures.get(example.id, 0)
        if failing == -1 or attempt <= failing:
            return Rollout(score=0.0, feedback="the agent raised", error="TimeoutError: slow")
        score = self.score if self.score is not None else (1.0 if prompts == BEST else 0.0)
        return Rollout(score=score, feedback="ok")


def _result() -> OptimizationResult:
    seed = Candidate(0, SEED.versions(), origin="seed", status="accepted")
    best = Candidate(1, BEST.versions(), parents=(0,), origin="reflection", status="accepted")
    return OptimizationResult(run_id="run-toy", agent="toy", best_prompts=BEST,
                              best_candidate_id=1, best_val_score=1.0, seed_val_score=0.0,
                              fronts={}, candidates=[seed, best], history=[],
                              totals=Totals(), stop_reason="done", iterations=1)


def test_a_transient_held_out_error_is_retried_and_never_scored():
    evaluator = TableEvaluator(failures={"t2": 2})
    held = evaluate_held_out(evaluator, _result(), SEED, TEST, None, workers=2)
    assert held.failed is None and held.gate is not None
    assert held.seed_scores == [0.0] * 6 and held.best_scores == [1.0] * 6
    assert evaluator.attempts[(0, "t2")] == 3 and evaluator.attempts[(0, "t1")] == 1


def test_a_held_out_rollout_failing_every_attempt_leaves_no_verdict():
    evaluator = TableEvaluator(failures={"t4": -1})
    held = evaluate_held_out(evaluator, _result(), SEED, TEST, None, workers=1)
    assert held.gate is None and held.seed_scores == [] and held.best_scores == []
    assert "t4" in held.failed and "TimeoutError: slow" in held.failed
    assert evaluator.attempts[(0, "t4")] == HELD_OUT_ATTEMPTS
    assert held.to_dict()["failed"] == held.failed


def test_an_evaluator_exception_is_an_error_too():
    held = evaluate_held_out(TableEvaluator(raises=RuntimeError("worker died")), _result(),
                             SEED, TEST, None, workers=2)
    assert held.gate is None and "RuntimeError: worker died" in held.failed


@pytest.mark.parametrize("score", [7.0, float("nan"), -0.5])
def test_a_held_out_score_outside_the_range_breaks_the_metric_contract(score):
    held = evaluate_held_out(TableEvaluator(score=score), _result(), SEED, TEST, None,
                             workers=2)
    assert held.gate is None and "outside the score range" in held.failed


def test_a_spent_budget_skips_the_held_out_test_instead_of_scoring_zeros():
    held = evaluate_held_out(TableEvaluator(raises=BudgetExhausted("max_cost_usd=1 reached")),
                             _result(), SEED, TEST, None, workers=2)
    assert held.failed is None and held.gate is None
    assert "max_cost_usd=1 reached" in held.skipped
