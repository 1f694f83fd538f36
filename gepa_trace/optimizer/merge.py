"""GEPA's system-aware merge: combine two lineages that improved different components.

Two candidates qualify when both are on some component's front, neither descends from
the other, and they share an ancestor that is no better (mean validation score) than
either, such that each of them changed a component the other kept at the ancestor's
version. The merged candidate takes, per component, the changed version (when both
changed it: the better candidate's, by mean validation score). It is first scored on a
stratified subsample of validation examples (where the first parent wins, where the
second wins, ties) and accepted when its sum is at least the better parent's sum there.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gepa_trace.optimizer.state import RunState, prompts_key


@dataclass(frozen=True)
class MergePlan:
    first: int
    second: int
    ancestor: int
    prompts: dict[str, str]
    sources: dict[str, int]  # component -> the candidate its version comes from


def front_candidates(state: RunState, objective_of: Callable[[str], str | None]) -> list[int]:
    """The candidates that carry a front member of some component (sorted ids)."""
    ids: set[int] = set()
    for component in state.components:
        for member in state.front(component, objective_of(component)).members:
            ids.add(member.candidate_id)
    return sorted(ids)


def _desirable(state: RunState, ancestor: int, a: int, b: int) -> bool:
    pa, pb, pc = (state.candidates[x].prompts for x in (ancestor, a, b))
    return any((pa[c] == pb[c] or pa[c] == pc[c]) and pb[c] != pc[c] for c in state.components)


def _combine(state: RunState, ancestor: int, a: int, b: int,
             rng: random.Random) -> tuple[dict[str, str], dict[str, int]]:
    anc, pa, pb = (state.candidates[x].prompts for x in (ancestor, a, b))
    prompts, sources = {}, {}
    for c in state.components:
        if pa[c] == pb[c]:
            source = a
        elif anc[c] == pa[c]:
            source = b
        elif anc[c] == pb[c]:
            source = a
        else:  # both changed it: the better candidate's version
            sa, sb = state.mean_val(a), state.mean_val(b)
            source = a if sa > sb else b if sb > sa else rng.choice([a, b])
        prompts[c] = state.candidates[source].prompts[c]
        sources[c] = source
    return prompts, sources


def find_merge(state: RunState, candidates: Sequence[int], rng: random.Random,
               tried_triplets: set[tuple[int, int, int]], tried_results: set[str],
               max_attempts: int = 10,
               exists: Callable[[dict[str, str]], bool] | None = None) -> MergePlan | None:
    """A merge of two of ``candidates`` not tried before, or None.

    ``tried_triplets`` holds (first, second, ancestor) already attempted and
    ``tried_results`` the prompts keys already produced; the plan's own entries are
    added to both. A plan whose prompts equal an existing candidate (``exists``,
    default: any candidate of the state) is skipped.
    """
    if exists is None:
        def exists(prompts: dict[str, str]) -> bool:
            return state.find(prompts) is not None
    if len(candidates) < 2:
        return None
    for _ in range(max_attempts):
        a, b = sorted(rng.sample(list(candidates), 2))
        anc_a, anc_b = state.ancestors(a), state.ancestors(b)
        if a in anc_b or b in anc_a:
            continue
        score_a, score_b = state.mean_val(a), state.mean_val(b)
        common = sorted(x for x in anc_a & anc_b
                        if (a, b, x) not in tried_triplets
                        and state.mean_val(x) <= score_a and state.mean_val(x) <= score_b
                        and _desirable(state, x, a, b))
        if not common:
            continue
        weights = [state.mean_val(x) for x in common]
        ancestor = (rng.choices(common, weights=weights, k=1)[0] if sum(weights) > 0
                    else common[rng.randrange(len(common))])
        prompts, sources = _combine(state, ancestor, a, b, rng)
        tried_triplets.add((a, b, ancestor))
        key = prompts_key(prompts)
        if key in tried_results or exists(prompts):
            continue
        tried_results.add(key)
        return MergePlan(a, b, ancestor, prompts, sources)
    return None


def stratified_subsample(scores_a: dict[str, float], scores_b: dict[str, float],
                         example_ids: Sequence[str], size: int,
                         rng: random.Random) -> list[str]:
    """Up to ``size`` validation ids: about a third where ``a`` beats ``b``, a third
    where ``b`` beats ``a``, the rest ties; topped up from the remaining ids. Returned in
    ``example_ids`` order."""
    size = min(size, len(example_ids))
    a_wins = [e for e in example_ids if scores_a[e] > scores_b[e]]
    b_wins = [e for e in example_ids if scores_b[e] > scores_a[e]]
    ties = [e for e in example_ids if scores_a[e] == scores_b[e]]
    each = max(1, math.ceil(size / 3))
    chosen: list[str] = []
    for bucket in (a_wins, b_wins, ties):
        take = min(len(bucket), each, size - len(chosen))
        if take > 0:
            chosen += rng.sample(bucket, take)
    rest = [e for e in example_ids if e not in chosen]
    if size > len(chosen):
        chosen += rng.sample(rest, size - len(chosen))
    order = {e: i for i, e in enumerate(example_ids)}
    return sorted(chosen, key=order.__getitem__)
