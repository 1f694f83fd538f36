"""Nightly runs: one optimization per agent at a time, and warm starts from last night."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from instrumented import instrumentation_shut_down

from gepa_trace.cli import main
from gepa_trace.collectors.instrument import active_instrumentation
from gepa_trace.store import open_store

OPTIMIZE = ["optimize", "--agent", "demo-qa", "--entrypoint", "gepa_trace.demo:build_agent",
            "--metric", "gepa_trace.demo:metric", "--reflection-lm", "gepa-sim/reflect"]


@pytest.fixture
def recorded(sqlite_url):
    from gepa_trace.demo.traffic import run_traffic

    with instrumentation_shut_down():
        run_traffic(90, store=sqlite_url, seed=1, feedback_rate=0.5)
    return sqlite_url


def test_two_optimizations_of_one_agent_at_once_one_runs_the_other_says_why(recorded):
    # Slow task model (injected latency) so the two runs overlap for certain.
    args = [sys.executable, "-m", "gepa_trace.cli", *OPTIMIZE, "--task-lm",
            "gepa-sim/task?latency_ms=40", "--budget-rollouts", "120", "--no-replay-cache",
            "--store", recorded]
    env = dict(os.environ, GEPA_TRACE_DEBUG="0")
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _out, _err in results)
    assert codes == [0, 5], results
    loser = next(err for code, _out, err in results if code == 5)
    assert "already being optimized" in loser or "just locked" in loser
    assert "Traceback" not in loser
    with open_store(recorded).read() as conn:
        runs = conn.execute(sa.text("SELECT count(*) FROM optimization_runs")).scalar()
        locks = conn.execute(sa.text("SELECT count(*) FROM run_locks")).scalar()
    assert runs == 1 and locks == 0


def test_warm_start_continues_from_last_nights_fronts(recorded):
    from gepa_trace.demo.traffic import run_traffic

    runner = CliRunner()
    first = runner.invoke(main, [*OPTIMIZE, "--budget-rollouts", "150", "--store", recorded,
                                 "--json"])
    assert first.exit_code == 0, first.output
    first_run = json.loads(first.stdout)
    run_traffic(40, store=recorded, seed=2, feedback_rate=0.5)  # today's new traffic
    active_instrumentation().shutdown()
    second = runner.invoke(main, [*OPTIMIZE, "--budget-rollouts", "150", "--since", "24h",
                                  "--warm-start", "--store", recorded, "--json"])
    assert second.exit_code == 0, second.output
    second_run = json.loads(second.stdout)
    with open_store(recorded).read() as conn:
        warm_from = conn.execute(sa.text("SELECT warm_start_from FROM optimization_runs "
                                         "WHERE id = :r"), {"r": second_run["run_id"]}).scalar()
        origins = conn.execute(sa.text("SELECT origin FROM candidates WHERE run_id = :r"),
                               {"r": second_run["run_id"]}).scalars().all()
    assert warm_from == first_run["run_id"]
    assert "warm_start" in origins
    assert second_run["examples"]["train"] + second_run["examples"]["val"] + \
        second_run["examples"]["test"] > first_run["examples"]["train"] + \
        first_run["examples"]["val"] + first_run["examples"]["test"], "new traces are added"
