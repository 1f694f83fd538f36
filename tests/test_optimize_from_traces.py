"""Optimizing the demo agent from its own recorded production traces, end to end.

One module-wide store: 300 traced production runs with user feedback (the traffic
generator), then `gepa-trace optimize` through the CLI, then what a user does next
(runs, export, report) on that same run.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from gepa_trace.cli import main
from gepa_trace.collectors.instrument import active_instrumentation
from gepa_trace.lm import sim
from gepa_trace.optimizer import OptimizerConfig
from gepa_trace.store import forget_store, open_store


def _shutdown_instrumentation():
    inst = active_instrumentation()
    if inst is not None:
        inst.shutdown()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    from gepa_trace.demo.traffic import run_traffic

    url = f"sqlite:///{tmp_path_factory.mktemp('traces') / 'store.db'}"
    run_traffic(300, store=url, seed=0, feedback_rate=0.5)
    _shutdown_instrumentation()
    yield url
    _shutdown_instrumentation()
    forget_store(url)


@pytest.fixture(scope="module")
def optimized(recorded):
    sim.reset_call_counts()
    result = CliRunner().invoke(main, [
        "optimize", "--agent", "demo-qa", "--entrypoint", "gepa_trace.demo:build_agent",
        "--metric", "gepa_trace.demo:metric", "--reflection-lm", "gepa-sim/reflect",
        "--budget-rollouts", "600", "--lookahead", "4", "--store", recorded, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    summary["sim_calls"] = sim.call_counts()
    _shutdown_instrumentation()
    return summary


def test_optimizing_from_production_traces_lifts_held_out_accuracy(optimized, recorded):
    held = optimized["held_out"]
    assert held["seed_test_score"] <= 0.5
    assert held["best_test_score"] >= 0.8
    assert held["gate"]["significant"]
    assert optimized["totals"]["rollouts"] <= 600
    # what running ahead cost is part of the record: a superseded child ran its
    # minibatch, and one run on a wrong guess its parent's too; an iteration run ahead
    # that proposed no child (every instruction kept) ran its parent's
    with open_store(recorded).engine.connect() as conn:
        childless = conn.execute(sa.text(
            "SELECT count(*) FROM run_events WHERE run_id = :r AND kind = 'proposal_failed' "
            "AND payload LIKE '%\"ahead\"%'"), {"r": optimized["run_id"]}).scalar_one()
    size = OptimizerConfig().minibatch_size
    assert 0 <= optimized["totals"]["superseded_rollouts"] <= (
        2 * size * optimized["totals"]["superseded"] + size * childless)


def test_recorded_runs_and_the_replay_cache_spare_at_least_20_percent_of_task_calls(
        optimized, recorded):
    sent, made = optimized["task_calls_sent"], optimized["task_calls_made"]
    assert sent == optimized["sim_calls"].get("task", 0), \
        "the run's totals agree with the simulated provider's own counter"
    # a rollout read from a recorded production run made no call at all: the calls that
    # run recorded are what a replay of it would have asked for
    with open_store(recorded).read() as conn:
        rows = conn.execute(sa.text(
            "SELECT records FROM evaluations WHERE run_id = :r AND trace_id = example_id"),
            {"r": optimized["run_id"]}).all()
    read = sum(len(recs) for row in rows for recs in json.loads(row.records).values())
    assert optimized["totals"]["recorded_rollouts"] == len(rows) > 0
    # 30% while each child changed one component (its unchanged upstream calls were
    # served); a child that changes every component repeats fewer recorded calls
    assert sent <= 0.8 * (made + read)
    hits = optimized["replay_cache_hits"]
    assert set(hits) >= {"query_writer", "evidence_selector", "answerer"}


def test_rollouts_are_traced_into_the_store_and_kept_apart_from_production(optimized, recorded):
    store = open_store(recorded)
    with store.read() as conn:
        tagged = conn.execute(sa.text("SELECT count(DISTINCT trace_id) FROM spans WHERE run_id = :r"),
                              {"r": optimized["run_id"]}).scalar()
    assert tagged >= optimized["totals"]["rollouts"]
    listed = json.loads(CliRunner().invoke(main, ["traces", "--agent", "demo-qa", "--limit", "0",
                                                  "--store", recorded, "--json"]).stdout)
    assert len(listed) == 300, "rollouts are not production runs"


def test_runs_and_runs_show_describe_the_run(optimized, recorded):
    runner = CliRunner()
    runs = json.loads(runner.invoke(main, ["runs", "--store", recorded, "--json"]).stdout)
    assert optimized["run_id"] in [r["id"] for r in runs]
    shown = json.loads(runner.invoke(main, ["runs", "show", optimized["run_id"], "--store",
                                            recorded, "--json"]).stdout)
    assert shown["best"]["id"] == optimized["best_candidate_id"]
    assert set(shown["fronts"]) == {"query_writer", "evidence_selector", "answerer"}
    assert any(d["diagnosis"] for d in shown["diagnoses"])


def test_a_run_says_its_validation_score_is_optimistic_wherever_it_shows_it(
        optimized, recorded, tmp_path):
    from gepa_trace.optimizer.config import OPTIMISTIC_VAL, val_is_optimistic

    # the defaults learn from validation failures; GEPA's settings and runs stored
    # before these settings existed do not
    assert optimized["val_optimistic"] is True
    assert not val_is_optimistic(OptimizerConfig.gepa())
    assert not val_is_optimistic({})
    runner = CliRunner()
    run_id = optimized["run_id"]
    shown = runner.invoke(main, ["runs", "show", run_id, "--store", recorded])
    assert f"  {OPTIMISTIC_VAL}\n" in shown.stdout
    as_json = json.loads(runner.invoke(main, ["runs", "show", run_id, "--store", recorded,
                                              "--json"]).stdout)
    assert as_json["val_optimistic"] is True
    out = tmp_path / "report.html"
    assert runner.invoke(main, ["report", run_id, "--out", str(out), "--store",
                                recorded]).exit_code == 0
    assert "the held-out test is the unbiased score." in out.read_text()


def test_export_accepts_the_best_and_writes_a_loadable_prompt_file(optimized, recorded, tmp_path):
    from gepa_trace.prompts import PromptSet

    out = tmp_path / "prompts.yaml"
    result = CliRunner().invoke(main, ["export", optimized["run_id"], "--out", str(out),
                                       "--store", recorded, "--promote", "production", "--json"])
    assert result.exit_code == 0, result.output
    prompts = PromptSet.load(out)
    assert prompts.versions() == optimized["best_prompts"]
    assert prompts.version_of("answerer").scores["test_best"] >= 0.8
    from gepa_trace.prompts.registry import load_prompts

    assert load_prompts("production", store=recorded, fallback=tmp_path / "fallback.json") == prompts


def test_export_refuses_a_candidate_no_better_than_the_seed(optimized, recorded, tmp_path):
    """Point the run's best at its seed: the held-out gain is zero, the gate refuses."""
    store = open_store(recorded)
    with store.write() as conn:
        seed_id = conn.execute(sa.text("SELECT id FROM candidates WHERE run_id = :r AND "
                                       "origin = 'seed'"), {"r": optimized["run_id"]}).scalar()
        conn.execute(sa.text("UPDATE optimization_runs SET best_candidate_id = :c WHERE id = :r"),
                     {"c": seed_id, "r": optimized["run_id"]})
    try:
        out = tmp_path / "p.json"
        result = CliRunner().invoke(main, ["export", optimized["run_id"], "--out", str(out),
                                           "--store", recorded])
        assert result.exit_code == 4
        assert "not above zero" in result.output and "+0.000" in result.output
        assert not out.exists()
        forced = CliRunner().invoke(main, ["export", optimized["run_id"], "--out", str(out),
                                           "--store", recorded, "--force"])
        assert forced.exit_code == 0 and "export forced" in forced.stderr and out.exists()
    finally:
        with store.write() as conn:
            conn.execute(sa.text("UPDATE optimization_runs SET best_candidate_id = :c "
                                 "WHERE id = :r"),
                         {"c": optimized["best_candidate_id"], "r": optimized["run_id"]})


def test_reflection_prompt_for_a_component_holds_only_its_own_spans(recorded):
    """The reflection on `answerer` sees answerer's rendered messages, not the others'."""
    import gepa_trace as gt
    from gepa_trace.demo import SEED_PROMPTS, build_agent, metric
    from gepa_trace.optimizer.protocols import RolloutContext
    from gepa_trace.optimizer.reflection import build_prompt, reflection_examples
    from gepa_trace.replay.dataset import load_examples
    from gepa_trace.replay.harness import AgentReplay

    inst = gt.instrument(store=recorded, service_name="demo-qa")
    try:
        replay = AgentReplay(build_agent, metric, agent="demo-qa", instrumentation=inst)
        examples = load_examples(open_store(recorded), "demo-qa", need_signal=False).train[:3]
        rollouts = [replay.evaluate(SEED_PROMPTS, e, RolloutContext("probe", 0, "minibatch"))
                    for e in examples]
    finally:
        inst.shutdown()
    prompt = build_prompt("answerer", SEED_PROMPTS.instruction("answerer"),
                          reflection_examples("answerer", examples, rollouts), max_tokens=6000)
    assert SEED_PROMPTS.instruction("answerer") in prompt
    assert all(r.records["answerer"][0].inputs[:200] in prompt for r in rollouts)
    for other in ("query_writer", "evidence_selector"):
        assert SEED_PROMPTS.instruction(other) not in prompt
        for r in rollouts:
            assert r.records[other][0].inputs not in prompt


def test_unimportable_entry_point_stops_before_spending_anything(recorded):
    result = CliRunner().invoke(main, [
        "optimize", "--agent", "demo-qa", "--entrypoint", "no_such_pkg.agent:build",
        "--reflection-lm", "gepa-sim/reflect", "--store", recorded])
    assert result.exit_code != 0
    assert "no_such_pkg.agent:build" in result.output and "Traceback" not in result.output
    with open_store(recorded).read() as conn:
        runs = conn.execute(sa.text("SELECT count(*) FROM optimization_runs WHERE id NOT IN "
                                    "(SELECT id FROM optimization_runs WHERE status = 'finished')"
                                    )).scalar()
    assert runs == 0


def test_log_only_replay_raises_the_judges_score_of_a_component(recorded):
    """No entry point: recorded calls re-rendered and judged; the judged score of the
    components the best candidate rewrote rises from the seed's. (Which components
    those are is the optimizer's outcome on the recorded traffic, not fixed here.)"""
    from gepa_trace.demo import SEED_PROMPTS
    from gepa_trace.lm import LM
    from gepa_trace.optimizer.protocols import RolloutContext
    from gepa_trace.replay.dataset import load_examples
    from gepa_trace.replay.logonly import LogOnlyReplay

    result = CliRunner().invoke(main, [
        "optimize", "--agent", "demo-qa", "--reflection-lm", "gepa-sim/reflect",
        "--task-lm", "gepa-sim/task", "--judge-lm", "gepa-sim/judge",
        "--budget-rollouts", "150", "--store", recorded, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    from gepa_trace.prompts.export import run_prompts

    best = run_prompts(open_store(recorded), summary["run_id"])
    rewritten = [c for c in SEED_PROMPTS
                 if best.versions()[c] != SEED_PROMPTS.versions()[c]]
    assert rewritten, "the best candidate is the seed"
    examples = load_examples(open_store(recorded), "demo-qa").val
    replay = LogOnlyReplay(open_store(recorded), "demo-qa", examples,
                           judge_lm=LM("gepa-sim/judge"),
                           lm_for_model=lambda model: LM("gepa-sim/task"))

    def judged_mean(prompts):
        scores = []
        for e in examples:
            rollout = replay.evaluate(prompts, e, RolloutContext("probe", 0, "val"))
            scores += [float(r.extra["judge_score"]) for c in rewritten
                       for r in rollout.records.get(c, [])]
        return sum(scores) / len(scores)

    assert judged_mean(best) > judged_mean(SEED_PROMPTS)
