"""Once the parent solves most inputs, a random minibatch of training examples often
holds nothing it fails, and the iteration is spent for nothing. So the last place of
the parent's minibatch goes to a validation example it fails (its rollout is stored
already: that place costs the parent nothing), and a minibatch keeps its size. The
loop's choices stay the one-at-a-time loop's at any lookahead; GEPA's settings never
do it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_optimizer_engine import decisions, run_toy
from test_optimizer_toys import RuleEvaluator

from gepa_trace.optimizer import OptimizerConfig
from gepa_trace.store import open_store

SHIPPED = {"component_selection": "all", "minibatch_size": 4, "val_start_share": 0.5,
           "val_failures_in_minibatch": 1}


def val_scores(store, run_id) -> dict[tuple[int, str], float]:
    with store.read() as conn:
        return {(c, e): s for c, e, s in conn.exec_driver_sql(
            "SELECT candidate_id, example_id, score FROM evaluations "
            "WHERE run_id = ?", (run_id,))}


def test_the_last_place_of_a_minibatch_is_a_validation_example_the_parent_fails(sqlite_url):
    store = open_store(sqlite_url)
    result, evaluator, _lm, _budget = run_toy(max_rollouts=300, store=store, **SHIPPED)
    scores = val_scores(store, result.run_id)
    by_id = {c.id: c for c in result.candidates}
    brought = 0
    for child in (c for c in result.candidates if c.origin == "reflection"):
        assert len(child.minibatch) == 4
        assert all(e.startswith("t") for e in child.minibatch[:3])  # the toy's train ids
        if child.minibatch[3].startswith("v"):
            brought += 1
            parent = by_id[child.parents[0]]
            assert scores[(parent.id, child.minibatch[3])] < 1.0
    assert brought >= 3, "no minibatch brought a validation failure: not a test of it"
    assert max(evaluator.calls.values()) == 1  # the parent's val rollout is reused


def test_a_parent_that_solves_validation_brings_none():
    result, *_ = run_toy(max_rollouts=300, **SHIPPED)
    by_id = {c.id: c for c in result.candidates}
    for child in (c for c in result.candidates if c.origin == "reflection"):
        if by_id[child.parents[0]].val_score == 1.0:
            assert all(e.startswith("t") for e in child.minibatch)


def test_gepas_settings_never_bring_validation_examples():
    assert OptimizerConfig.gepa().val_failures_in_minibatch == 0
    assert OptimizerConfig().val_failures_in_minibatch == 1
    result, *_ = run_toy(max_rollouts=200, component_selection="all", minibatch_size=4)
    assert not any(e.startswith("v") for c in result.candidates if c.origin == "reflection"
                   for e in c.minibatch)


def test_validation_failures_keep_the_choices_of_the_one_at_a_time_loop():
    one = run_toy(max_rollouts=600, evaluator=RuleEvaluator(capacity=1, latency_s=0.0005),
                  lookahead=1, workers=8, seed=1, **SHIPPED)[0]
    ahead = run_toy(max_rollouts=300, evaluator=RuleEvaluator(capacity=1, latency_s=0.0005),
                    lookahead=8, workers=8, seed=1, **SHIPPED)[0]
    assert any(e.startswith("v") for c in ahead.candidates for e in c.minibatch)
    assert any(c.status == "superseded" for c in ahead.candidates)
    judged = [d for d in decisions(ahead) if d[4] != "proposed"]
    assert len(judged) >= 15
    assert judged == decisions(one)[:len(judged)]
