"""`optimize --resume RUN_ID` takes the options the run was started with."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from instrumented import instrumentation_shut_down

from gepa_trace.cli import main
from gepa_trace.store import open_store

OPTIMIZE = ["optimize", "--agent", "demo-qa", "--entrypoint", "gepa_trace.demo:build_agent",
            "--metric", "gepa_trace.demo:metric", "--reflection-lm", "gepa-sim/reflect"]


@pytest.fixture
def recorded(sqlite_url):
    from gepa_trace.demo.traffic import run_traffic

    with instrumentation_shut_down():
        run_traffic(60, store=sqlite_url, seed=2, feedback_rate=0.5)
    return sqlite_url


def _run_row(url: str, run_id: str):
    with open_store(url).read() as conn:
        return conn.execute(sa.text("SELECT status, stop_reason, totals FROM "
                                    "optimization_runs WHERE id = :id"), {"id": run_id}).one()


def _stopped_run(recorded: str, tmp_path) -> str:
    stop = tmp_path / "stop"
    stop.touch()  # the run stops at its first safe point
    first = CliRunner().invoke(main, [*OPTIMIZE, "--budget-rollouts", "70", "--seed", "3",
                                      "--stop-file", str(stop), "--store", recorded, "--json"])
    assert first.exit_code == 0, first.output
    run_id = json.loads(first.stdout)["run_id"]
    assert _run_row(recorded, run_id).status == "stopped"
    stop.unlink()
    return run_id


def test_resume_needs_only_the_run_id(recorded, tmp_path):
    run_id = _stopped_run(recorded, tmp_path)
    resumed = CliRunner().invoke(main, ["optimize", "--resume", run_id, "--store", recorded,
                                        "--json"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["run_id"] == run_id and summary["agent"] == "demo-qa"
    limits = summary["totals"]["budget"]["limits"]
    assert limits["max_rollouts"] == 70, "the run's own budget, not the default 300"
    assert summary["totals"]["rollouts"] <= 70
    assert "note:" not in resumed.stderr


def test_an_option_given_again_on_resume_replaces_the_stored_one_with_a_note(recorded,
                                                                             tmp_path):
    run_id = _stopped_run(recorded, tmp_path)
    resumed = CliRunner().invoke(main, ["optimize", "--resume", run_id, "--budget-rollouts",
                                        "90", "--store", recorded, "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert "note: --budget-rollouts 90 replaces 70" in resumed.stderr
    assert json.loads(resumed.stdout)["totals"]["budget"]["limits"]["max_rollouts"] == 90


def test_resuming_a_finished_run_reports_it_and_leaves_it_unchanged(recorded):
    first = CliRunner().invoke(main, [*OPTIMIZE, "--budget-rollouts", "40", "--store",
                                      recorded, "--json"])
    assert first.exit_code == 0, first.output
    run_id = json.loads(first.stdout)["run_id"]
    before = _run_row(recorded, run_id)
    assert before.status == "finished"
    again = CliRunner().invoke(main, ["optimize", "--resume", run_id, "--budget-rollouts",
                                      "500", "--store", recorded])
    assert again.exit_code == 0, again.output
    assert f"run {run_id} has finished" in again.stderr
    assert _run_row(recorded, run_id) == before


def test_resume_of_another_agents_run_is_refused(recorded, tmp_path):
    run_id = _stopped_run(recorded, tmp_path)
    wrong = CliRunner().invoke(main, ["optimize", "--resume", run_id, "--agent", "other",
                                      "--store", recorded])
    assert wrong.exit_code == 1
    assert "optimizes agent 'demo-qa', not 'other'" in wrong.output


def test_optimize_without_agent_or_reflection_lm_says_which_is_missing(recorded):
    missing = CliRunner().invoke(main, ["optimize", "--agent", "demo-qa", "--store", recorded])
    assert missing.exit_code == 2
    assert "--reflection-lm" in missing.output
