"""`gepa-trace demo`: the whole cycle, with the summary a machine reads."""

from __future__ import annotations

import json

from click.testing import CliRunner
from instrumented import instrumentation_shut_down

from gepa_trace.cli import main

FIELDS = {"run_id", "agent", "seed_test_score", "best_test_score", "ci_low", "ci_high",
          "exported", "report", "rollouts", "llm_calls", "replay_cache_hits", "cost_usd",
          "elapsed_s", "metric", "true_seed_test_score", "true_best_test_score",
          "true_test_questions"}


def test_demo_runs_the_whole_cycle_and_prints_its_summary(tmp_path):
    out = tmp_path / "demo"
    with instrumentation_shut_down():
        result = CliRunner().invoke(main, ["demo", "--out", str(out), "--runs", "150",
                                           "--budget-rollouts", "240", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert FIELDS <= set(summary)
    assert summary["agent"] == "demo-qa" and summary["simulated"] is True
    assert summary["metric"] == "feedback"  # recorded feedback only; the oracle reports after
    # its judge (the reflection LM's family by default) is metered as the judge role
    assert summary["spent"]["all"]["llm_calls_by_role"].get("judge", 0) > 0
    # the budget bounds the search; the summary counts every phase of the command
    assert summary["spent"]["phases"]["search"]["rollouts"] <= 240
    assert summary["rollouts"] == summary["spent"]["all"]["rollouts"]
    assert summary["best_test_score"] >= summary["seed_test_score"]
    assert (out / "report.html").is_file()
    assert summary["report"] == str(out / "report.html")
    if summary["exported"]:
        assert (out / "prompts.json").is_file() and summary["ci_low"] > 0
    assert summary["replay_cache_hits"] > 0 and summary["cost_usd"] > 0
    assert "[1/5] production traffic" in result.stderr
