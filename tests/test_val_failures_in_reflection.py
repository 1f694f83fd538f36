"""A minibatch shows a reflection one or two failures; the parent's stored validation
rollouts hold more. So each reflection also reads up to ``val_failures_in_reflection``
validation examples its parent fails, at no rollout's cost; acceptance still looks at
the minibatch alone. And when validation cannot tell two candidates apart, the best is
the one that descends from the other (it beat its parent on a minibatch)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_optimizer_engine import decisions, run_toy
from test_optimizer_toys import RuleEvaluator

from gepa_trace.optimizer import OptimizerConfig
from gepa_trace.optimizer.protocols import Rollout
from gepa_trace.optimizer.state import Candidate, RunState
from gepa_trace.store import open_store

SHIPPED = {"component_selection": "all", "minibatch_size": 4, "val_start_share": 0.5,
           "val_failures_in_minibatch": 1, "val_failures_in_reflection": 3}


def stored_scores(store, run_id) -> dict[tuple[int, str], float]:
    with store.read() as conn:
        return {(c, e): s for c, e, s in conn.exec_driver_sql(
            "SELECT candidate_id, example_id, score FROM evaluations "
            "WHERE run_id = ?", (run_id,))}


def test_a_reflection_reads_more_validation_failures_of_its_parent_at_no_rollouts_cost(
        sqlite_url):
    store = open_store(sqlite_url)
    result, evaluator, lm, _budget = run_toy(max_rollouts=300, store=store, grow_val=False,
                                             **SHIPPED)
    scores = stored_scores(store, result.run_id)
    read = 0
    for child in (c for c in result.candidates if c.origin == "reflection"):
        ids = child.meta.get("reflection_read", [])
        assert len(ids) <= 3 and not set(ids) & set(child.minibatch)
        for example_id in ids:
            assert example_id.startswith("v")  # the toy's validation ids
            assert scores[(child.parents[0], example_id)] < 1.0
            assert any(f"question {example_id}?" in prompt for prompt in lm.prompts)
        read += len(ids)
    assert read >= 6, "no reflection read a validation failure: not a test of it"
    assert max(evaluator.calls.values()) == 1  # read from the store, never run again


def test_the_reflection_reads_none_of_them_with_gepas_settings():
    assert OptimizerConfig.gepa().val_failures_in_reflection == 0
    assert OptimizerConfig().val_failures_in_reflection > 0
    result, *_ = run_toy(max_rollouts=200, component_selection="all", minibatch_size=4)
    assert not any(c.meta.get("reflection_read") for c in result.candidates)


def test_a_run_stored_before_the_setting_existed_resumes_without_it():
    old = OptimizerConfig.from_dict({"seed": 3, "minibatch_size": 4})
    assert old.val_failures_in_reflection == 0 and old.val_failures_in_minibatch == 0


def test_reading_validation_failures_keeps_the_choices_of_the_one_at_a_time_loop():
    one = run_toy(max_rollouts=600, evaluator=RuleEvaluator(capacity=1, latency_s=0.0005),
                  lookahead=1, workers=8, seed=1, **SHIPPED)[0]
    ahead = run_toy(max_rollouts=300, evaluator=RuleEvaluator(capacity=1, latency_s=0.0005),
                    lookahead=8, workers=8, seed=1, **SHIPPED)[0]
    assert any(c.meta.get("reflection_read") for c in ahead.candidates)
    assert any(c.status == "superseded" for c in ahead.candidates)
    judged = [d for d in decisions(ahead) if d[4] != "proposed"]
    assert len(judged) >= 15
    assert judged == decisions(one)[:len(judged)]


def _state_with(scores: dict[int, list[float]], parents: dict[int, tuple[int, ...]]
                ) -> RunState:
    val = [f"v{i}" for i in range(len(next(iter(scores.values()))))]
    state = RunState(["answerer"], val)
    for cid in sorted(scores):
        candidate = state.add_candidate(Candidate(cid, {"answerer": f"v{cid}"},
                                                  parents=parents.get(cid, ())))
        for example_id, score in zip(val, scores[cid]):
            state.remember(candidate, example_id, Rollout(score=score))
        state.join_pool(candidate)
    return state


def test_a_child_that_ties_its_parent_on_validation_is_the_best():
    # 1 and 3 tie at the top; 3 descends from 1 through 2 (which scored lower)
    state = _state_with({0: [0, 0, 1], 1: [1, 1, 0], 2: [1, 0, 0], 3: [0, 1, 1]},
                        {1: (0,), 2: (1,), 3: (2,)})
    assert state.best_id() == 3
    assert state.first_best_ids() == [1, 3]


def test_unrelated_candidates_tied_on_validation_leave_the_earliest_best():
    state = _state_with({0: [0, 0, 1], 1: [1, 1, 0], 2: [0, 1, 1]}, {1: (0,), 2: (0,)})
    assert state.best_id() == 1
