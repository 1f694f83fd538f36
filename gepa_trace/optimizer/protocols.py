"""The small contracts the optimizer is built on (it knows nothing of LangChain).

- An ``Evaluator`` runs a candidate's prompts on one example and returns a ``Rollout``:
  the score, a feedback sentence, and per-component ``ComponentRecord``s for reflection.
  When the example fails (the agent or the metric raised, the metric broke its
  contract) it raises, or returns a ``Rollout`` with ``error`` set and no exception
  text in the feedback. Either way the failure is not a score: the optimizer retries
  it and never records, caches or reflects on it (``optimizer.failures``).
- A reflection LM is any ``Callable[[str], str]``; ``gepa_trace.lm.LM`` is one.
- A metric is ``metric(example, output, trace) -> float | Score``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gepa_trace.prompts import PromptSet


@dataclass(frozen=True)
class Score:
    """A metric's verdict on one output: higher is better, within
    [``OptimizerConfig.min_score``, ``perfect_score``] (0..1 unless configured). The
    optimizer records a score outside that range as an evaluator error and counts the
    nearest end of it."""

    score: float
    feedback: str = ""

    @staticmethod
    def checked(value: Any, low: float = 0.0, high: float = 1.0) -> Score:
        """The metric contract, checked the same way everywhere (preflight, the loop,
        the held-out test): a number (a bool counts as 0 or 1), a ``Score`` or ``(score, feedback)``,
        finite and within ``[low, high]``. Anything else raises ``MetricContractError``
        naming what came back."""
        from gepa_trace.errors import MetricContractError

        raw = value.score if isinstance(value, Score) else (
            value[0] if isinstance(value, tuple) and len(value) == 2 else value)
        if not isinstance(raw, (int, float)):
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise MetricContractError(
                f"the metric returned {type(value).__name__} {shown}; expected a float or "
                f"Score(score, feedback) in [{low:g}, {high:g}]")
        score = float(raw)
        if not (math.isfinite(score) and low <= score <= high):
            raise MetricContractError(
                f"the metric returned score {score!r}, outside the score range "
                f"[{low:g}, {high:g}] (OptimizerConfig.min_score, perfect_score)")
        return Score.of(value)

    @staticmethod
    def of(value: float | bool | Score | tuple) -> Score:
        """A Score from what a metric returned (a number, a Score, or (score, feedback))."""
        if isinstance(value, Score):
            return value
        if isinstance(value, tuple) and len(value) == 2:
            return Score(float(value[0]), str(value[1]))
        return Score(float(value))


@dataclass(frozen=True)
class Example:
    """One recorded run used for optimization: what went in, and what we know of the answer.

    ``expected`` is the correct answer when the feedback gives one, by the rule of
    ``store.verdict``: an explicit correction (a record's ``expected`` field), a comment
    in one of the recognised correction phrasings ("Correct answer: Paris"), or the
    recorded output when its score approved it; else None. A ``label`` is a tag, evidence
    like a comment, never the correct answer. ``feedback`` holds the production feedback
    records on the recorded output; ``meta["verdict"]`` (``Verdict.to_dict()``) says
    where ``expected`` came from, ``meta["feedback_score"]`` is the run's score (0..1).
    """

    id: str
    inputs: Mapping[str, Any]
    expected: Any = None
    output: Any = None
    feedback: tuple[Mapping[str, Any], ...] = ()
    trace_id: str | None = None
    split: str = "train"  # train | val | test
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ComponentRecord:
    """What one component saw and said during a rollout (one LLM call of it)."""

    component: str
    inputs: str  # the rendered messages, as text
    output: str
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rollout:
    """The result of running one candidate on one example.

    ``llm_calls``, ``tokens`` and ``cost_usd`` are what the rollout's own LLM calls
    made and cost; the engine charges them to the budget as the rollout ends (so call
    and dollar limits cover the agent's calls too), unless ``metered``: they went
    through an LM that meters the run's budget itself, which counted them already.

    ``recorded``: not run at all: a recorded production run of exactly these prompt
    versions, scored by the metric on its own output (``RecordedEvidence``); it costs
    no rollout of the budget.

    ``error`` set means the rollout failed: ``score`` and ``feedback`` then mean nothing
    and the optimizer reads neither. ``permanent``: a retry would fail the same way
    (auth, not found, the metric's contract), so it is not retried. ``attempts``: how
    many times the optimizer ran it (set by the optimizer; 1 without retries).
    """

    score: float
    feedback: str = ""
    output: Any = None
    records: dict[str, list[ComponentRecord]] = field(default_factory=dict)
    error: str | None = None
    trace_id: str | None = None
    llm_calls: int = 0
    cache_hits: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    permanent: bool = False
    attempts: int = 1
    metered: bool = False
    recorded: bool = False


@dataclass(frozen=True)
class RolloutContext:
    """Who is asking: lets an evaluator tag the rollout's trace. ``score_range`` is the
    run's [min_score, perfect_score], the range ``Score.checked`` holds a metric to."""

    run_id: str
    candidate_id: int
    purpose: str  # minibatch | val | test | merge
    score_range: tuple[float, float] = (0.0, 1.0)


@runtime_checkable
class Evaluator(Protocol):
    def evaluate(self, prompts: PromptSet, example: Example,
                 context: RolloutContext) -> Rollout: ...


@runtime_checkable
class RecordedEvidence(Protocol):
    """Recorded production runs as rollouts that cost nothing (``replay.recorded``).

    ``covers`` says, cheaply and without side effects, whether the example's recorded
    run carried exactly these prompt versions (so its output is what a rollout of them
    would show); ``rollout`` then scores that output with the run's metric and returns
    the Rollout (``recorded=True``, ``trace_id`` the example's own trace), or None when
    it cannot (the optimizer then runs the example live)."""

    def covers(self, prompts: PromptSet, example: Example) -> bool: ...

    def rollout(self, prompts: PromptSet, example: Example,
                context: RolloutContext) -> Rollout | None: ...


ReflectionLM = Callable[[str], str]
Metric = Callable[[Example, Any, Any], "float | Score"]
