"""`--max-llm-calls` and `--max-cost` are ceilings for the whole optimize command: the
preflight, the search (rollouts in flight counted) and the held-out test, with agent
replay, log-only replay and a judge metric. The held-out result is real or skipped."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from instrumented import recorded_demo

from gepa_trace.cli import main

AGENT = ["optimize", "--agent", "demo-qa", "--reflection-lm", "gepa-sim/reflect",
         "--budget-rollouts", "5000", "--workers", "8"]
REPLAY = ["--entrypoint", "gepa_trace.demo:build_agent", "--metric", "gepa_trace.demo:metric"]
JUDGE = ["--entrypoint", "gepa_trace.demo:build_agent", "--metric", "judge",
         "--judge-lm", "gepa-sim/judge"]
LOG_ONLY = ["--judge-lm", "gepa-sim/judge", "--task-lm", "gepa-sim/task"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return recorded_demo(tmp_path_factory.mktemp("budget"), 60, seed=4, feedback_rate=0.6)


def _optimize(recorded: str, mode: list[str], limit: list[str]) -> dict:
    out = CliRunner().invoke(main, [*AGENT, *mode, *limit, "--store", recorded, "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def _held_out_is_real_or_skipped(summary: dict) -> None:
    held = summary["held_out"]
    assert held.get("gate") or held.get("skipped"), held
    if held.get("gate"):
        assert held["n"] > 0 and not held.get("failed")


@pytest.mark.parametrize("mode", [REPLAY, JUDGE, LOG_ONLY],
                         ids=["agent-replay", "judge-metric", "log-only"])
@pytest.mark.parametrize("calls", [120, 400])
def test_max_llm_calls_bounds_the_whole_command(recorded, mode, calls):
    summary = _optimize(recorded, mode, ["--max-llm-calls", str(calls)])
    spent = summary["spent"]["all"]
    assert spent["llm_calls"] <= calls, summary["spent"]
    assert spent["llm_calls"] == sum(spent["llm_calls_by_role"].values())
    _held_out_is_real_or_skipped(summary)


@pytest.mark.parametrize("mode", [REPLAY, LOG_ONLY], ids=["agent-replay", "log-only"])
def test_max_cost_bounds_the_whole_command(recorded, mode):
    limit = 0.01
    summary = _optimize(recorded, mode, ["--max-cost", str(limit)])
    assert summary["spent"]["all"]["cost_usd"] <= limit, summary["spent"]
    _held_out_is_real_or_skipped(summary)


def test_a_generous_limit_leaves_room_for_a_real_held_out_test(recorded):
    summary = _optimize(recorded, REPLAY, ["--max-llm-calls", "2000"])
    assert summary["held_out"]["gate"] is not None, summary["held_out"]
    assert summary["spent"]["all"]["llm_calls"] <= 2000


def test_log_only_replay_skips_runs_it_cannot_re_render_instead_of_scoring_them(tmp_path):
    """A run recorded without its template variables (a foreign instrumentation, say)
    is no example for log-only replay: counted as skipped, never evaluated as a 0."""
    import sqlalchemy as sa

    from gepa_trace.store import forget_store, open_store

    url = recorded_demo(tmp_path, 40, seed=5, feedback_rate=0.8)
    with open_store(url).write() as conn:
        traces = [r[0] for r in conn.execute(sa.text(
            "SELECT DISTINCT trace_id FROM spans ORDER BY trace_id LIMIT 12"))]
        for trace in traces:
            conn.execute(sa.text(
                "UPDATE spans SET attributes = json_remove(attributes, "
                "'$.\"gepa.prompt.variables\"') WHERE trace_id = :t"), {"t": trace})
    forget_store(url)
    summary = _optimize(url, LOG_ONLY, ["--budget-rollouts", "60"])
    assert summary["examples"]["skipped_not_replayable"] > 0, summary["examples"]
    with open_store(url).read() as conn:  # an example's id is its run's trace id
        evaluated = {r[0] for r in conn.execute(sa.text(
            "SELECT DISTINCT example_id FROM evaluations WHERE run_id = :id"),
            {"id": summary["run_id"]})}
    assert evaluated and not evaluated & set(traces)
