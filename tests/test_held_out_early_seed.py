"""The seed's held-out rollouts may start beside the loop (``heldout.EarlySeed``): the
held-out test then reports and charges exactly what it would have run itself, and runs
no rollout of the seed twice."""

from __future__ import annotations

import dataclasses
import time

from test_held_out_errors import SEED, TEST, TableEvaluator, _result

from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer.protocols import Rollout, RolloutContext
from gepa_trace.replay.heldout import EarlySeed, evaluate_held_out


class CostlyEvaluator(TableEvaluator):
    """A rollout that made two task calls, 10 tokens and $0.01."""

    def evaluate(self, prompts, example, context) -> Rollout:
        rollout = super().evaluate(prompts, example, context)
        return dataclasses.replace(rollout, llm_calls=2, tokens=10, cost_usd=0.01)


def _context(run_id: str = "run-toy") -> RolloutContext:
    return RolloutContext(run_id, 0, "test", (0.0, 1.0))


def _held_out(evaluator, early=None):
    budget = Budget(max_rollouts=100)
    held = evaluate_held_out(evaluator, _result(), SEED, TEST, None, workers=2, budget=budget,
                             early=early)
    return held, dataclasses.replace(budget.spent(), seconds=0.0)


def test_started_seed_rollouts_give_the_same_verdict_and_spend_and_are_not_run_again():
    plain, plain_spent = _held_out(CostlyEvaluator())
    evaluator = CostlyEvaluator()
    early = EarlySeed(evaluator, SEED, TEST, _context())
    held, spent = _held_out(evaluator, early)
    early.close()
    assert (held.seed_scores, held.best_scores, held.gate) == \
        (plain.seed_scores, plain.best_scores, plain.gate)
    assert dataclasses.replace(held.spend, seconds=0) == \
        dataclasses.replace(plain.spend, seconds=0)
    assert spent == plain_spent, "each early rollout is charged to the budget when taken"
    assert all(evaluator.attempts[(0, e.id)] == 1 for e in TEST), "no seed rollout ran twice"


def test_seed_rollouts_started_for_another_run_are_not_used():
    evaluator = CostlyEvaluator()
    early = EarlySeed(evaluator, SEED, TEST, _context(run_id="run-other"))
    deadline = time.monotonic() + 10
    while sum(evaluator.attempts.values()) < len(TEST) and time.monotonic() < deadline:
        time.sleep(0.01)  # all of them have run
    held, _ = _held_out(evaluator, early)
    early.close()
    assert held.seed_scores == [0.0] * len(TEST)
    assert all(evaluator.attempts[(0, e.id)] == 2 for e in TEST), "the test ran its own"


def test_an_early_seed_rollout_that_kept_failing_fails_the_held_out_test_as_before():
    evaluator = CostlyEvaluator(failures={"t3": -1})
    early = EarlySeed(evaluator, SEED, TEST, _context())
    held, _ = _held_out(evaluator, early)
    early.close()
    assert held.gate is None and "t3" in held.failed
