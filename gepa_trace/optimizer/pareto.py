"""Per-component Pareto fronts (pure functions; no state, no randomness).

The front of component c holds the versions of c that no other version of c dominates
on the per-example validation scores, where a version's score on an example is the best
score of any evaluated candidate that used it. With a secondary objective (lower is
better: prompt tokens or cost) dominance also compares it, giving a two-objective front.

Version ``a`` dominates ``b`` when ``a`` is at least as good on every example (and on the
secondary objective, if any) and strictly better on at least one of them. Versions with
identical score vectors do not dominate each other; both stay.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

VersionScores = Mapping[str, Mapping[str, float]]  # version -> example id -> score


@dataclass(frozen=True)
class FrontMember:
    """One version on a component's front.

    ``wins``: the validation examples on which it holds the best score (ties count for
    every holder), plus one if it holds the best secondary value. ``candidate_id``: the
    best candidate (by mean validation score) that uses this version.
    """

    version: str
    candidate_id: int
    wins: int
    mean: float
    secondary: float | None = None


@dataclass(frozen=True)
class ComponentFront:
    component: str
    members: tuple[FrontMember, ...]
    objective: str | None = None

    def versions(self) -> list[str]:
        return [m.version for m in self.members]


def version_scores(component: str,
                   candidates: Iterable[tuple[Mapping[str, str], Mapping[str, float]]]
                   ) -> dict[str, dict[str, float]]:
    """For each version of ``component``: per example, the best score of any candidate
    (given as (prompts, per-example scores)) that used it."""
    out: dict[str, dict[str, float]] = {}
    for prompts, scores in candidates:
        version = prompts[component]
        best = out.setdefault(version, {})
        for example_id, score in scores.items():
            if example_id not in best or score > best[example_id]:
                best[example_id] = score
    return out


def dominates(a: str, b: str, scores: VersionScores, example_ids: Sequence[str],
              secondary: Mapping[str, float] | None = None) -> bool:
    """Whether version ``a`` dominates version ``b`` (a missing score counts as 0)."""
    strictly = False
    for example_id in example_ids:
        sa = scores[a].get(example_id, 0.0)
        sb = scores[b].get(example_id, 0.0)
        if sa < sb:
            return False
        if sa > sb:
            strictly = True
    if secondary is not None:
        if secondary[a] > secondary[b]:
            return False
        if secondary[a] < secondary[b]:
            strictly = True
    return strictly


def pareto_front(scores: VersionScores, example_ids: Sequence[str],
                 secondary: Mapping[str, float] | None = None) -> list[str]:
    """The versions no other version dominates, in sorted order."""
    versions = sorted(scores)
    return [v for v in versions
            if not any(dominates(w, v, scores, example_ids, secondary)
                       for w in versions if w != v)]


def wins(front: Sequence[str], scores: VersionScores, example_ids: Sequence[str],
         secondary: Mapping[str, float] | None = None) -> dict[str, int]:
    """How many examples each front member wins (holds the best score on, ties shared),
    plus one for the member(s) with the lowest secondary value."""
    counts = {v: 0 for v in front}
    if not front:
        return counts
    for example_id in example_ids:
        best = max(scores[v].get(example_id, 0.0) for v in front)
        for v in front:
            if scores[v].get(example_id, 0.0) == best:
                counts[v] += 1
    if secondary is not None:
        lowest = min(secondary[v] for v in front)
        for v in front:
            if secondary[v] == lowest:
                counts[v] += 1
    return counts
