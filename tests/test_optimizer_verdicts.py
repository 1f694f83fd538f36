"""A child's minibatch verdict is acted on as soon as its finished rollouts fix it: each
rollout still running can add only between ``min_score`` and ``perfect_score``. The
verdict is recorded, with the whole minibatch sum, once the rest are in. A score outside
that range is a failed rollout, never a score.
"""

from __future__ import annotations

import threading
import time

import pytest

from gepa_trace.errors import ConfigError
from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer import (
    ComponentRecord,
    EventLog,
    Example,
    Optimizer,
    OptimizerConfig,
    Rollout,
)
from gepa_trace.optimizer.events import OptimizerErrorEvent
from gepa_trace.prompts import PromptSet

SEED = PromptSet({"answerer": [("system", "Answer {question}.")]}, agent="verdicts")


def examples(*ids: str, split: str) -> list[Example]:
    return [Example(id=i, inputs={"question": f"{i}?"}, split=split) for i in ids]


def say_good(prompt: str) -> str:
    """The reflection LM: every new instruction says GOOD."""
    return "Diagnosis: it never says GOOD.\n\n```\nAnswer {question}. GOOD\n```\n"


class Timed:
    """Scores 1 when the answerer's instruction says GOOD, except on "slow", which no
    prompt solves and which takes ``delay`` seconds for every candidate but the seed.
    ``scores`` overrides the score of an example for every candidate. Logs when each
    rollout started and ended."""

    def __init__(self, delay: float = 0.0, scores: dict[str, float] | None = None):
        self.delay = delay
        self.scores = scores or {}
        self.log: list[tuple[int, str, str, float, float]] = []
        self._lock = threading.Lock()

    def evaluate(self, prompts, example, context) -> Rollout:
        start = time.monotonic()
        if example.id == "slow" and context.candidate_id != 0:
            time.sleep(self.delay)
        instruction = prompts.instruction("answerer")
        score = self.scores.get(example.id, 0.0 if example.id == "slow"
                                else float("GOOD" in instruction))
        with self._lock:
            self.log.append((context.candidate_id, context.purpose, example.id, start,
                             time.monotonic()))
        return Rollout(score=score, feedback="Correct." if score else "Say GOOD.",
                       records={"answerer": [ComponentRecord("answerer", instruction,
                                                             f"score {score}")]})


def optimize(evaluator, max_rollouts: int, callbacks=(), **config) -> object:
    config.setdefault("workers", 4)
    config.setdefault("grow_val", False)
    return Optimizer(evaluator, say_good, SEED,
                     examples("e1", "e2", "slow", split="train"),
                     examples("v1", "v2", split="val"), Budget(max_rollouts=max_rollouts),
                     agent="verdicts", callbacks=callbacks,
                     config=OptimizerConfig(minibatch_size=3, val_failures_in_minibatch=0,
                                            **config)).run()


def test_an_accepted_child_is_validated_before_its_slowest_minibatch_rollout_ends():
    evaluator = Timed(delay=1.5)
    result = optimize(evaluator, max_rollouts=10)
    child = result.candidates[1]
    assert (child.status, child.origin, child.val_score) == ("accepted", "reflection", 1.0)
    # 1 + 1 from e1 and e2 beat the parent's 0 whatever "slow" scores
    slow_end = next(end for cid, purpose, eid, _start, end in evaluator.log
                    if (cid, purpose, eid) == (1, "minibatch", "slow"))
    first_val = min(start for cid, purpose, _eid, start, _end in evaluator.log
                    if (cid, purpose) == (1, "val"))
    assert first_val < slow_end - 1.0
    # and the record holds the whole minibatch, the slow rollout included
    assert (child.minibatch_parent_sum, child.minibatch_child_sum) == (0.0, 2.0)
    assert result.totals.rollouts == 10


def test_the_verdict_is_the_whole_minibatch_sums_when_the_last_rollout_decides_it():
    # "slow" decides: the child's 1 + 1 + 0 ties the parent's 1 + 1 + 0 (parent "GOOD"
    # already), so a strict improvement is missing only once "slow" is in
    seed = SEED.with_instruction("answerer", "Answer {question}. Be GOOD")
    evaluator = Timed(delay=0.3, scores={"v2": 0.0})  # validation stays unsolved
    result = Optimizer(evaluator, say_good, seed, examples("e1", "e2", "slow", split="train"),
                       examples("v1", "v2", split="val"), Budget(max_rollouts=10),
                       agent="verdicts",
                       config=OptimizerConfig(minibatch_size=3, workers=4, grow_val=False,
                                              max_idle_iterations=2,
                                              val_failures_in_minibatch=0)).run()
    children = [c for c in result.candidates if c.origin == "reflection"]
    assert children, result.stop_reason
    assert all(c.status == "rejected" for c in children)
    assert (children[0].minibatch_parent_sum, children[0].minibatch_child_sum) == (2.0, 2.0)


@pytest.mark.parametrize("bad", [1.5, -2.0, float("nan")])
def test_a_score_outside_the_score_range_is_an_error_never_a_score(bad):
    log = EventLog()
    evaluator = Timed(scores={"v1": bad, "v2": 0.0})
    result = optimize(evaluator, max_rollouts=8, callbacks=[log])
    assert result.candidates[0].val_score is None  # the seed's validation was not judged
    errors = [e for e in log.of(OptimizerErrorEvent) if e.kind == "evaluator"]
    assert errors and all(e.example_id == "v1" for e in errors)
    assert "outside the score range [0, 1]" in errors[0].message
    assert result.totals.evaluator_errors == len(errors)
    assert result.failed_with.startswith("candidate 0 on example v1: the score")
    # the same metric would score it so again: not retried
    assert sum(1 for _c, p, e, *_ in evaluator.log if (p, e) == ("val", "v1")) == 1


def test_a_metric_on_another_scale_sets_the_score_range():
    result = optimize(Timed(scores={"v1": 7.0, "v2": 3.0}), max_rollouts=8,
                      perfect_score=10.0)
    assert result.candidates[0].val_score == 5.0
    assert result.totals.evaluator_errors == 0


def test_an_empty_score_range_is_refused_naming_min_score():
    with pytest.raises(ConfigError, match="min_score"):
        OptimizerConfig(min_score=1.0).validate()
