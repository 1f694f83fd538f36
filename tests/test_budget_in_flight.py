"""The budget counts what rollouts in flight may still spend (lm/budget.py)."""

from __future__ import annotations

import threading

import pytest

from gepa_trace.errors import BudgetExhausted
from gepa_trace.lm.budget import Budget


def test_rollouts_in_flight_hold_the_costliest_rollouts_spend():
    budget = Budget(max_cost_usd=1.0)
    budget.settle_rollout(llm_calls=3, tokens=100, cost_usd=0.3, started=False)
    budget.start_rollout()
    budget.start_rollout()  # 0.3 spent + 2 x 0.3 held = 0.9
    with pytest.raises(BudgetExhausted, match=r"max_cost_usd=1.0 reached \(counting 3"):
        budget.start_rollout()
    budget.settle_rollout(llm_calls=1, tokens=10, cost_usd=0.05)
    assert budget.spent().cost_usd == pytest.approx(0.35)
    budget.start_rollout()  # 0.35 + 2 x 0.3 = 0.95 fits
    with pytest.raises(BudgetExhausted):  # a third in flight would not
        budget.start_rollout()
    assert budget.spent().llm_calls == 4
    assert budget.spent().llm_calls_by_role == {"task": 4}


def test_a_limit_of_llm_calls_counts_the_rollouts_own_calls():
    budget = Budget(max_llm_calls=5)
    budget.start_rollout()
    budget.settle_rollout(llm_calls=2)
    budget.start_llm_call("reflection")
    budget.start_llm_call("reflection")
    with pytest.raises(BudgetExhausted, match="max_llm_calls=5"):
        budget.start_rollout()  # 4 spent + 2 held > 5
    budget.start_llm_call("reflection")
    assert budget.exhausted().startswith("max_llm_calls=5 reached")


def test_the_first_rollout_runs_alone_until_it_says_what_it_costs():
    budget = Budget(max_cost_usd=1.0)
    budget.start_rollout()
    started = threading.Event()

    def second():
        budget.start_rollout()
        started.set()

    waiter = threading.Thread(target=second)
    waiter.start()
    assert not started.wait(0.3), "a second rollout waits for the first one's measure"
    budget.settle_rollout(cost_usd=0.2)
    assert started.wait(5)
    waiter.join(5)


def test_without_spend_limits_rollouts_never_wait():
    budget = Budget(max_rollouts=10)
    for _ in range(10):
        budget.start_rollout()
    with pytest.raises(BudgetExhausted, match="max_rollouts=10"):
        budget.start_rollout()


def test_a_share_held_back_is_kept_from_the_search_until_released():
    budget = Budget(max_llm_calls=10)
    budget.hold_back(0.3)
    for _ in range(7):
        budget.start_llm_call("reflection")
    with pytest.raises(BudgetExhausted, match="of the search's share"):
        budget.start_llm_call("reflection")
    budget.release_held_back()
    budget.start_llm_call("task")
    budget.start_rollout(counted=False)  # the held-out test's rollouts: not max_rollouts
    assert budget.spent().rollouts == 0
    with pytest.raises(ValueError):
        budget.hold_back(1.0)
