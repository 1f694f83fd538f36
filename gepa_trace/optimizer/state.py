"""The state of one run: candidates and their lineage, prompt versions, the evaluation
cache, and what is derived from them (the pool, the fronts, the best candidate).

Everything here is touched by the main thread only. The evaluation cache is keyed by
(the candidate's prompts — its component -> version map — and the example id), so two
candidates with the same prompts share their evaluations, and no pair is run twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gepa_trace.optimizer.pareto import (
    ComponentFront,
    FrontMember,
    pareto_front,
    version_scores,
    wins,
)
from gepa_trace.optimizer.protocols import Rollout
from gepa_trace.prompts import PromptSet, PromptVersion

ORIGINS = ("seed", "reflection", "merge", "warm_start")


def prompts_key(prompts: Mapping[str, str]) -> str:
    """A stable text key of a component -> version map."""
    return ",".join(f"{c}={v}" for c, v in sorted(prompts.items()))


def approx_tokens(text: str) -> int:
    """A model-independent token estimate (about four characters a token)."""
    return math.ceil(len(text) / 4)


#: Statuses of children that were never judged and do not count as candidates (yet):
#: "speculative", proposed while their parent was still being validated, on the guess
#: that it would be the next iteration's parent; "superseded", proposed on a guess that
#: turned out wrong (or the run stopped first).
UNJUDGED = ("speculative", "superseded")


def first_live(candidates: Iterable[Candidate]) -> Candidate | None:
    """The first of ``candidates`` that is neither superseded nor speculative, or None."""
    return next((c for c in candidates if c.status not in UNJUDGED), None)


@dataclass
class Candidate:
    """A candidate: one prompt version per component, with how it was born.

    ``origin`` is seed | reflection | merge | warm_start; ``component`` the component(s)
    reflected on (comma separated) for reflection children; ``meta`` holds details such
    as a merge's common ancestor, and where each line of the instructions it introduced
    came from (``provenance``, ``evidence``: see ``optimizer.provenance``).
    """

    id: int
    prompts: dict[str, str]
    parents: tuple[int, ...] = ()
    origin: str = "seed"
    component: str | None = None
    iteration: int = 0
    status: str = "proposed"  # proposed | accepted | rejected | speculative | superseded
    diagnosis: str | None = None
    reason: str | None = None
    minibatch: tuple[str, ...] = ()
    minibatch_parent_sum: float | None = None
    minibatch_child_sum: float | None = None
    val_score: float | None = None
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return prompts_key(self.prompts)


class RunState:
    """Candidates, versions and evaluations of one run, plus the derived views.

    ``val_ids`` fixes the order of validation examples; aggregation always follows it.
    A candidate is in the *pool* (eligible as a parent, counted in the fronts) once it is
    a seed, warm start or accepted child with every validation example scored.
    """

    def __init__(self, components: Sequence[str], val_ids: Sequence[str]):
        self.components = list(components)
        self.val_ids = list(val_ids)
        self.candidates: list[Candidate] = []
        self.versions: dict[tuple[str, str], PromptVersion] = {}
        self.cache: dict[tuple[str, str], Rollout] = {}
        self.pool: list[int] = []
        self.iteration = 0
        self.by_key: dict[str, list[int]] = {}

    # versions and candidates
    def add_version(self, pv: PromptVersion) -> None:
        self.versions.setdefault((pv.component, pv.version), pv)

    def prompt_set(self, candidate: Candidate, agent: str | None = None) -> PromptSet:
        return PromptSet({c: self.versions[(c, v)] for c, v in candidate.prompts.items()},
                         agent=agent)

    def add_candidate(self, candidate: Candidate) -> Candidate:
        if candidate.id != len(self.candidates):
            raise ValueError(f"candidate id {candidate.id} out of sequence "
                             f"(expected {len(self.candidates)})")
        self.candidates.append(candidate)
        self.by_key.setdefault(candidate.key, []).append(candidate.id)
        return candidate

    def next_id(self) -> int:
        return len(self.candidates)

    def find(self, prompts: Mapping[str, str]) -> Candidate | None:
        """The first candidate with these prompts that is neither superseded nor
        speculative (a child never judged does not count: proposed again by a planned
        iteration, it is a new candidate, or the speculative one adopted)."""
        return first_live(self.candidates[cid]
                          for cid in self.by_key.get(prompts_key(prompts), ()))

    # evaluations
    def cached(self, candidate: Candidate, example_id: str) -> Rollout | None:
        return self.cache.get((candidate.key, example_id))

    def remember(self, candidate: Candidate, example_id: str, rollout: Rollout) -> None:
        self.cache[(candidate.key, example_id)] = rollout

    def val_scores(self, candidate: Candidate) -> dict[str, float] | None:
        """Per-example validation scores, or None while any is missing."""
        out = {}
        for example_id in self.val_ids:
            rollout = self.cache.get((candidate.key, example_id))
            if rollout is None:
                return None
            out[example_id] = rollout.score
        return out

    def extend_val(self, example_ids: Sequence[str]) -> None:
        """Add validation examples; pool candidates not yet scored on all of them
        leave the pool."""
        self.val_ids.extend(example_ids)
        self.pool = [cid for cid in self.pool
                     if self.val_scores(self.candidates[cid]) is not None]

    def mean_val(self, candidate_id: int) -> float:
        scores = self.val_scores(self.candidates[candidate_id]) or {}
        return sum(scores.values()) / len(scores) if scores else 0.0

    def ancestors(self, candidate_id: int) -> set[int]:
        seen: set[int] = set()
        stack = list(self.candidates[candidate_id].parents)
        while stack:
            parent = stack.pop()
            if parent not in seen:
                seen.add(parent)
                stack.extend(self.candidates[parent].parents)
        return seen

    # derived views
    def join_pool(self, candidate: Candidate) -> None:
        """Put a fully validated candidate in the pool (idempotent)."""
        scores = self.val_scores(candidate)
        if scores is None:
            raise ValueError(f"candidate {candidate.id} lacks validation scores")
        candidate.val_score = sum(scores.values()) / len(scores) if scores else 0.0
        if candidate.id not in self.pool:
            self.pool.append(candidate.id)

    def best_id(self) -> int:
        """The pool's best candidate by mean validation score. Ties: a candidate that
        descends from another tied one is preferred to it (every accepted child beat
        its parent on a minibatch, so where validation cannot tell them apart the
        descendant won the one more comparison that was made), then the earliest."""
        tied = self.first_best_ids()
        ancestors = set().union(*(self.ancestors(cid) for cid in tied)) if len(tied) > 1 else ()
        return min(cid for cid in tied if cid not in ancestors)

    def first_best_ids(self) -> list[int]:
        """The pool's candidates with the best mean validation score, earliest first."""
        if not self.pool:
            raise ValueError("no candidate has been validated yet")
        means = {cid: self.mean_val(cid) for cid in self.pool}
        top = max(means.values())
        return sorted(cid for cid, mean in means.items() if mean == top)

    def secondary_values(self, component: str, objective: str | None,
                         versions: Iterable[str]) -> dict[str, float] | None:
        if objective is None:
            return None
        out = {}
        for version in versions:
            if objective == "prompt_tokens":
                messages = self.versions[(component, version)].messages
                out[version] = float(sum(approx_tokens(m.get("content", "")) for m in messages))
            else:  # cost: the cheapest mean validation cost among candidates using it
                costs = []
                for cid in self.pool:
                    cand = self.candidates[cid]
                    if cand.prompts[component] == version:
                        rollouts = [self.cache[(cand.key, e)] for e in self.val_ids]
                        costs.append(sum(r.cost_usd for r in rollouts) / max(1, len(rollouts)))
                out[version] = min(costs) if costs else 0.0
        return out

    def front(self, component: str, objective: str | None = None) -> ComponentFront:
        """The Pareto front of ``component`` over the pool."""
        pool = [self.candidates[cid] for cid in self.pool]
        scores = version_scores(component, [(c.prompts, self.val_scores(c) or {}) for c in pool])
        secondary = self.secondary_values(component, objective, scores)
        members = pareto_front(scores, self.val_ids, secondary)
        counts = wins(members, scores, self.val_ids, secondary)
        out = []
        for version in members:
            best = self.best_candidate_using(component, version)
            out.append(FrontMember(version, best, counts[version], self.mean_val(best),
                                   None if secondary is None else secondary[version]))
        return ComponentFront(component, tuple(out), objective)

    def best_candidate_using(self, component: str, version: str) -> int:
        users = [cid for cid in self.pool if self.candidates[cid].prompts[component] == version]
        return max(users, key=lambda cid: (self.mean_val(cid), -cid))
