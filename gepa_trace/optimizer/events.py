"""What a run reports while it runs: event dataclasses and the callback Protocol.

A callback implements any subset of the ``on_*`` methods of ``OptimizerCallback``;
``Callbacks`` fans each event out to many of them. A callback that raises is logged and
skipped (the run goes on), except under pytest, where the error is re-raised so tests
see it. Callbacks are called on the run's main thread, in a deterministic order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gepa_trace.config import under_pytest

log = logging.getLogger("gepa_trace.optimizer")


@dataclass(frozen=True)
class IterationStarted:
    """``ahead``: planned before the iterations just before it were judged (lookahead).
    Such an iteration is announced again when it is planned for real: with
    ``ahead=False`` when its guess held and it is the first of its window, and started
    afresh when an iteration before it was accepted (its guess failed)."""

    iteration: int
    components: tuple[str, ...]
    parent_id: int | None = None
    ahead: bool = False


@dataclass(frozen=True)
class CandidateProposed:
    iteration: int
    candidate_id: int
    origin: str
    parents: tuple[int, ...]
    component: str | None
    diagnosis: str | None = None


@dataclass(frozen=True)
class CandidateAccepted:
    iteration: int
    candidate_id: int
    parent_sum: float | None
    child_sum: float | None


@dataclass(frozen=True)
class CandidateRejected:
    """A proposal that lost its minibatch, or could not be made (``candidate_id`` None:
    a malformed reply, an LLM error); ``reason`` says which."""

    iteration: int
    candidate_id: int | None
    reason: str
    parent_sum: float | None = None
    child_sum: float | None = None


@dataclass(frozen=True)
class CandidateValidated:
    iteration: int
    candidate_id: int
    val_score: float
    best_id: int
    best_score: float
    new_best: bool


@dataclass(frozen=True)
class FrontChanged:
    component: str
    versions: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True)
class ValidationGrown:
    """Validation was solved by ``solved_by`` and grew by ``added`` training examples
    to ``size``; ``best_score`` is the best candidate's mean on all of them."""

    iteration: int
    added: int
    size: int
    solved_by: int
    best_id: int
    best_score: float


@dataclass(frozen=True)
class BudgetSpent:
    rollouts: int
    llm_calls: int
    tokens: int
    cost_usd: float
    seconds: float
    limits: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerErrorEvent:
    """Something failed and was recorded: kind is evaluator | reflection_reply |
    reflection_lm | callback | store."""

    kind: str
    message: str
    iteration: int | None = None
    candidate_id: int | None = None
    example_id: str | None = None


@dataclass(frozen=True)
class RunStopped:
    reason: str
    iteration: int


@runtime_checkable
class OptimizerCallback(Protocol):
    """Implement any of these; missing methods are simply not called."""

    def on_iteration_started(self, event: IterationStarted) -> None: ...
    def on_candidate_proposed(self, event: CandidateProposed) -> None: ...
    def on_candidate_accepted(self, event: CandidateAccepted) -> None: ...
    def on_candidate_rejected(self, event: CandidateRejected) -> None: ...
    def on_candidate_validated(self, event: CandidateValidated) -> None: ...
    def on_front_changed(self, event: FrontChanged) -> None: ...
    def on_validation_grown(self, event: ValidationGrown) -> None: ...
    def on_budget_spent(self, event: BudgetSpent) -> None: ...
    def on_error(self, event: OptimizerErrorEvent) -> None: ...
    def on_run_stopped(self, event: RunStopped) -> None: ...


_METHOD = {
    IterationStarted: "on_iteration_started",
    CandidateProposed: "on_candidate_proposed",
    CandidateAccepted: "on_candidate_accepted",
    CandidateRejected: "on_candidate_rejected",
    CandidateValidated: "on_candidate_validated",
    FrontChanged: "on_front_changed",
    ValidationGrown: "on_validation_grown",
    BudgetSpent: "on_budget_spent",
    OptimizerErrorEvent: "on_error",
    RunStopped: "on_run_stopped",
}


def method_of(event: object) -> str:
    return _METHOD[type(event)]


class Callbacks:
    """Fans every event out to many callbacks, in the order given."""

    def __init__(self, callbacks: Iterable[object] = ()):
        self.callbacks = list(callbacks)

    def emit(self, event: object) -> None:
        name = method_of(event)
        for callback in self.callbacks:
            method = getattr(callback, name, None)
            if method is None:
                continue
            try:
                method(event)
            except Exception:
                if under_pytest():
                    raise
                log.exception("optimizer callback %r failed on %s", callback, name)


class EventLog:
    """A callback that keeps every event (for tests and reports)."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def __getattr__(self, name: str):
        if name in _METHOD.values():
            return self.events.append
        raise AttributeError(name)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]
