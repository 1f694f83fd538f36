"""Per-component Pareto fronts: property tests of their defining guarantees (issue 4,
acceptance 4), and parent selection in proportion to the examples a member wins."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gepa_trace.optimizer.config import OptimizerConfig
from gepa_trace.optimizer.pareto import dominates, pareto_front, version_scores, wins
from gepa_trace.optimizer.protocols import Rollout
from gepa_trace.optimizer.selection import candidate_selector
from gepa_trace.optimizer.state import Candidate, RunState
from gepa_trace.prompts import PromptVersion

SCORES = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])


@st.composite
def fronts_input(draw, with_secondary: bool | None = None):
    n_examples = draw(st.integers(1, 6))
    examples = [f"e{i}" for i in range(n_examples)]
    n_versions = draw(st.integers(1, 8))
    scores = {f"v{j}": {e: draw(SCORES) for e in examples} for j in range(n_versions)}
    if with_secondary is None:
        with_secondary = draw(st.booleans())
    secondary = ({v: float(draw(st.integers(1, 4))) for v in scores}
                 if with_secondary else None)
    return examples, scores, secondary


@settings(max_examples=300, deadline=None)
@given(fronts_input())
def test_no_front_member_is_dominated(data):
    examples, scores, secondary = data
    front = pareto_front(scores, examples, secondary)
    assert front, "a non-empty set of versions has a non-empty front"
    for member in front:
        for other in scores:
            assert not dominates(other, member, scores, examples, secondary)


@settings(max_examples=300, deadline=None)
@given(fronts_input())
def test_every_examples_best_score_is_held_by_a_front_member(data):
    examples, scores, secondary = data
    front = pareto_front(scores, examples, secondary)
    for e in examples:
        best = max(s[e] for s in scores.values())
        assert any(scores[m][e] == best for m in front)
    # and so every example is won by some member
    assert sum(wins(front, scores, examples, secondary).values()) >= len(examples)


@settings(max_examples=300, deadline=None)
@given(fronts_input(), st.data())
def test_adding_a_dominated_version_changes_nothing(data, draw):
    examples, scores, secondary = data
    front = pareto_front(scores, examples, secondary)
    base = draw.draw(st.sampled_from(front))
    # A new version no better than `base` anywhere and strictly worse somewhere.
    lowered = {e: draw.draw(st.sampled_from([s for s in (0.0, 0.25, 0.5, 0.75, 1.0)
                                             if s <= scores[base][e]]))
               for e in examples}
    new_secondary = None
    if secondary is not None:
        new_secondary = dict(secondary)
        new_secondary["new"] = secondary[base] + draw.draw(st.sampled_from([0.0, 1.0]))
    if lowered == scores[base] and (secondary is None or new_secondary["new"] == secondary[base]):
        first = examples[0]
        if scores[base][first] == 0.0:
            if secondary is None:
                return  # nothing below an all-zero vector without a second objective
            new_secondary["new"] = secondary[base] + 1.0
        else:
            lowered[first] = 0.0
    extended = {**scores, "new": lowered}
    assert dominates(base, "new", extended, examples, new_secondary)
    assert pareto_front(extended, examples, new_secondary) == front
    assert (wins(front, extended, examples, new_secondary)
            == wins(front, scores, examples, secondary))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                          st.lists(SCORES, min_size=3, max_size=3)), min_size=1, max_size=6))
def test_a_versions_score_is_the_best_of_the_candidates_using_it(rows):
    examples = ["e0", "e1", "e2"]
    candidates = [({"comp": v}, dict(zip(examples, s))) for v, s in rows]
    merged = version_scores("comp", candidates)
    for version, per_example in merged.items():
        for i, e in enumerate(examples):
            assert per_example[e] == max(s[i] for v, s in rows if v == version)


def test_a_shorter_prompt_survives_on_a_two_objective_front():
    examples = ["e0", "e1"]
    scores = {"long": {"e0": 1.0, "e1": 1.0}, "short": {"e0": 1.0, "e1": 0.5}}
    assert pareto_front(scores, examples) == ["long"]
    tokens = {"long": 300.0, "short": 40.0}
    assert pareto_front(scores, examples, tokens) == ["long", "short"]
    assert wins(["long", "short"], scores, examples, tokens) == {"long": 2, "short": 2}


def _state_with_front() -> RunState:
    """Three pool candidates whose planner versions win 3, 1 and 0 of 4 examples."""
    state = RunState(["planner"], ["e0", "e1", "e2", "e3"])
    table = {"v-a": [1, 1, 1, 0], "v-b": [0, 0, 0, 1], "v-c": [0.5, 0.5, 0.5, 0.5]}
    for i, (name, row) in enumerate(table.items()):
        pv = PromptVersion("planner", [{"role": "system", "content": name}])
        state.add_version(pv)
        cand = state.add_candidate(Candidate(i, {"planner": pv.version}, status="accepted"))
        for e, score in zip(state.val_ids, row):
            state.remember(cand, e, Rollout(score=float(score)))
        state.join_pool(cand)
    return state


def test_parents_are_drawn_in_proportion_to_the_examples_they_win():
    state = _state_with_front()
    front = state.front("planner")
    assert {m.candidate_id: m.wins for m in front.members} == {0: 3, 1: 1, 2: 0}
    select = candidate_selector(OptimizerConfig())
    rng = random.Random(7)
    counts = Counter(select(state, "planner", rng) for _ in range(4000))
    assert counts[2] == 0  # on the front, but it wins no example
    assert abs(counts[0] / 4000 - 0.75) < 0.03
    assert abs(counts[1] / 4000 - 0.25) < 0.03


def test_current_best_and_epsilon_greedy_selection():
    state = _state_with_front()
    best = state.best_id()
    assert best == 0  # mean 0.75
    rng = random.Random(1)
    greedy = candidate_selector(OptimizerConfig(candidate_selection="current_best"))
    assert {greedy(state, "planner", rng) for _ in range(50)} == {best}
    eps = candidate_selector(OptimizerConfig(candidate_selection="epsilon_greedy", epsilon=0.5))
    picks = Counter(eps(state, "planner", rng) for _ in range(2000))
    assert picks[best] > 1000 and picks[1] > 200 and picks[2] > 200
