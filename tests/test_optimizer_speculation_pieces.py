"""Each piece of speculation changes only what runs ahead, never what the loop decides:
with either guess turned off (as bench/bench_optimizer_vs_gepa.py --lookahead-rows does to
show what each buys) the judged candidates are the one-at-a-time loop's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_optimizer_engine import decisions, run_toy
from test_optimizer_toys import RuleEvaluator

from gepa_trace.optimizer import Optimizer


def _toy(lookahead, max_rollouts):
    return run_toy(max_rollouts=max_rollouts,
                   evaluator=RuleEvaluator(capacity=1, latency_s=0.0005),
                   lookahead=lookahead, workers=8, seed=2)[0]


@pytest.mark.parametrize("off", [("_run_ahead",), ("_speculate",)],
                         ids=["run-ahead off", "parent guess off"])
def test_turning_off_a_guess_keeps_the_decisions_of_the_one_at_a_time_loop(monkeypatch, off):
    one = decisions(_toy(1, 800))
    for name in off:
        monkeypatch.setattr(Optimizer, name, lambda self, *args, **kwargs: None)
    ahead = _toy(8, 400)
    judged = [d for d in decisions(ahead) if d[4] != "proposed"]
    assert len(judged) >= 30
    assert judged == one[:len(judged)]
    # the guess left on still ran: the comparison is of a piece, not of lookahead off
    assert ahead.totals.speculated >= 1

