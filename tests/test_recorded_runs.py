"""The store's production runs of the seed's own prompts are rollouts the optimizer does
not pay for: the seed is scored on validation (and on its minibatches) from what
production recorded, the budget buys only new candidates' rollouts, and the scores are
the ones a replay would give. Runs of another model are not read as this one's."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from instrumented import recorded_demo
from sqlalchemy import text

from gepa_trace.cli import main
from gepa_trace.demo import metric
from gepa_trace.replay.dataset import load_examples
from gepa_trace.store import open_store

OPTIMIZE = ["optimize", "--agent", "demo-qa", "--reflection-lm", "gepa-sim/reflect",
            "--entrypoint", "gepa_trace.demo:build_agent", "--metric", "gepa_trace.demo:metric",
            "--budget-rollouts", "40", "--workers", "4", "--json"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return recorded_demo(tmp_path_factory.mktemp("recorded"), 60, seed=4, feedback_rate=0.6)


def _optimize(url: str, *extra: str) -> dict:
    out = CliRunner().invoke(main, [*OPTIMIZE, "--store", url, *extra])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def _seed_val_traces(url: str, run_id: str) -> list[tuple[str, str]]:
    with open_store(url).read() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT example_id, trace_id FROM evaluations WHERE run_id = :r "
            "AND candidate_id = 0 AND purpose = 'val'"), {"r": run_id})]


def test_the_seed_is_scored_from_its_recorded_runs_without_spending_rollouts(recorded):
    summary = _optimize(recorded, "--task-lm", "gepa-sim/task")
    totals = summary["totals"]
    assert summary["spent"]["phases"]["search"]["rollouts"] <= 40
    # each seed validation score is the recorded run itself, scored by the metric
    seed_val = _seed_val_traces(recorded, summary["run_id"])
    assert seed_val and all(example == trace for example, trace in seed_val)
    assert totals["recorded_rollouts"] >= len(seed_val)
    data = load_examples(open_store(recorded), "demo-qa", need_signal=False)
    val = {e.id: e for e in data.val}
    direct = [metric(val[e], val[e].output).score for e, _t in seed_val]
    assert summary["seed_val_score"] == pytest.approx(sum(direct) / len(direct))


def test_without_recorded_runs_the_seed_is_replayed_and_scores_the_same(recorded):
    read = _optimize(recorded, "--task-lm", "gepa-sim/task")
    replayed = _optimize(recorded, "--task-lm", "gepa-sim/task", "--no-recorded-runs")
    assert replayed["totals"]["recorded_rollouts"] == 0
    assert all(example != trace
               for example, trace in _seed_val_traces(recorded, replayed["run_id"]))
    assert replayed["seed_val_score"] == pytest.approx(read["seed_val_score"])
    # the replay paid for the seed's validation: fewer rollouts left for new candidates
    assert (replayed["totals"]["rollouts"] - replayed["val_size"]
            <= read["totals"]["rollouts"])


def test_runs_recorded_with_another_model_are_not_read_as_this_ones(recorded):
    summary = _optimize(recorded, "--task-lm", "gepa-sim/task?latency_ms=1")
    assert summary["totals"]["recorded_rollouts"] == 0
