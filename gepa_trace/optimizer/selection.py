"""Which parent and which component an iteration works on.

Candidate selectors pick a parent from the pool for a component; component selectors
pick the component(s) an iteration reflects on. Each is a small function of the state,
the iteration number and a seeded ``random.Random`` the engine owns, so a run is
reproducible and a resumed run makes the same choices.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from gepa_trace.errors import ConfigError
from gepa_trace.optimizer.config import OptimizerConfig
from gepa_trace.optimizer.state import RunState


class CandidateSelector(Protocol):
    def __call__(self, state: RunState, component: str, rng: random.Random) -> int:
        """The id of a pool candidate to use as the parent when improving ``component``."""


class ComponentSelector(Protocol):
    def __call__(self, components: Sequence[str], iteration: int) -> list[str]:
        """The component(s) iteration ``iteration`` (1-based) reflects on."""


def pareto_selector(objective_of: Callable[[str], str | None]) -> CandidateSelector:
    """GEPA's selection on the component's front: a member version is drawn with
    probability proportional to the examples it wins, then mapped back to the best
    candidate using it."""

    def select(state: RunState, component: str, rng: random.Random) -> int:
        front = state.front(component, objective_of(component))
        weighted = [m for m in front.members if m.wins > 0]
        if not weighted:  # no validation examples: every member is as good
            return state.best_id()
        total = sum(m.wins for m in weighted)
        point = rng.random() * total
        for member in weighted:
            point -= member.wins
            if point < 0:
                return member.candidate_id
        return weighted[-1].candidate_id

    return select


def current_best(state: RunState, component: str, rng: random.Random) -> int:
    """Always the best candidate by mean validation score (still draws once from rng so
    every strategy consumes randomness alike)."""
    rng.random()
    return state.best_id()


def epsilon_greedy(epsilon: float) -> CandidateSelector:
    """The best candidate, or with probability ``epsilon`` a uniformly drawn pool member."""

    def select(state: RunState, component: str, rng: random.Random) -> int:
        if rng.random() < epsilon:
            return state.pool[rng.randrange(len(state.pool))]
        return state.best_id()

    return select


def round_robin(components: Sequence[str], iteration: int) -> list[str]:
    return [components[(iteration - 1) % len(components)]]


def all_components(components: Sequence[str], iteration: int) -> list[str]:
    return list(components)


def candidate_selector(config: OptimizerConfig) -> CandidateSelector:
    if config.candidate_selection == "pareto":
        return pareto_selector(config.secondary_for)
    if config.candidate_selection == "current_best":
        return current_best
    if config.candidate_selection == "epsilon_greedy":
        return epsilon_greedy(config.epsilon)
    raise ConfigError(f"unknown candidate_selection {config.candidate_selection!r}")


def component_selector(config: OptimizerConfig) -> ComponentSelector:
    if config.component_selection == "round_robin":
        return round_robin
    if config.component_selection == "all":
        return all_components
    raise ConfigError(f"unknown component_selection {config.component_selection!r}")
