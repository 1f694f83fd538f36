"""Evaluator factories for rollouts in worker processes (test helpers).

They live in an importable module, not in a test file: a worker process is spawned and
unpickles its factory by reference.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer.protocols import Example, Rollout, RolloutContext
from gepa_trace.prompts import PromptSet


class _Echo:
    def __init__(self, budget: Budget, judge: str | None):
        self.judge = None
        if judge:
            from gepa_trace.lm import LM

            self.judge = LM(judge, budget=budget, role="judge")

    def evaluate(self, prompts: PromptSet, example: Example,
                 context: RolloutContext) -> Rollout:
        if example.inputs.get("die"):
            os._exit(3)  # the worker process dies in the middle of a rollout
        if example.inputs.get("raise"):
            raise ValueError(f"cannot answer {example.id}")
        if example.inputs.get("bad_key"):  # what litellm raises for a wrong API key
            import litellm

            raise litellm.AuthenticationError(message="Missing credentials",
                                              llm_provider="openai", model="gpt-4.1")
        if self.judge is not None:
            self.judge("Is this answer right? yes")
        return Rollout(score=1.0, feedback=f"pid {os.getpid()}",
                       output={"example": example.id, "pid": os.getpid(),
                               "frozen": gc.get_freeze_count()})

    def close(self) -> dict:
        return {"pid": os.getpid()}


@dataclass(frozen=True)
class EchoFactory:
    """Scores every example 1 and says which process ran it; dies or raises on demand;
    with ``judge``, makes one LLM call per rollout metered by the worker's budget."""

    judge: str | None = None

    def __call__(self, budget: Budget) -> _Echo:
        return _Echo(budget, self.judge)


@dataclass(frozen=True)
class BrokenFactory:
    """A factory that fails in the worker process, as a bad entry point would."""

    def __call__(self, budget: Budget):
        raise ImportError("no module named 'my_agent'")
