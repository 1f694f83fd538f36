"""One source of truth for a run's totals: every printer shows the same numbers.

A small demo cycle (traffic, optimization in worker processes, held-out test, report),
then a nightly `gepa-trace optimize --json` on the same store. For each run, the
numbers the demo summary, `optimize --json` and its text, `runs` / `runs show` (JSON and
text) and the report print are compared with the run's stored ``totals["command"]``,
and that block with what the run recorded row by row (evaluations, cache hits by
component).
"""

from __future__ import annotations

import json
import re

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from gepa_trace.cli import main
from gepa_trace.cli.optimize import print_outcome
from gepa_trace.collectors.instrument import active_instrumentation
from gepa_trace.demo.cycle import DemoSettings, run_demo, summary_lines
from gepa_trace.optimizer.result import PHASES, spend_lines
from gepa_trace.report.data import load_report_data
from gepa_trace.report.html import render_page
from gepa_trace.store import forget_store, open_store

COUNTS = ("rollouts", "replay_cache_hits", "tokens", "errors", "llm_calls")


def _shutdown_instrumentation():
    inst = active_instrumentation()
    if inst is not None:
        inst.shutdown()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    url = f"sqlite:///{out / 'demo.db'}"
    try:
        summary = run_demo(DemoSettings(store=url, out_dir=out, runs=40, budget_rollouts=30,
                                        workers=4, processes=2))
    finally:
        _shutdown_instrumentation()
    yield url, summary
    forget_store(url)


@pytest.fixture(scope="module")
def nightly(demo):
    url, _summary = demo
    try:
        result = CliRunner().invoke(main, [
            "optimize", "--agent", "demo-qa", "--entrypoint", "gepa_trace.demo:build_agent",
            "--metric", "gepa_trace.demo:metric", "--reflection-lm", "gepa-sim/reflect",
            "--task-lm", "gepa-sim/task", "--budget-rollouts", "16", "--store", url,
            "--json"])
    finally:
        _shutdown_instrumentation()
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _stored(url: str, run_id: str) -> dict:
    with open_store(url).read() as conn:
        raw = conn.execute(sa.text("SELECT totals FROM optimization_runs WHERE id = :id"),
                           {"id": run_id}).scalar()
    return json.loads(raw)


def _cli_json(*args: str):
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _cli_text(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _assert_same(block: dict, stored: dict) -> None:
    """Every count of every phase, and the dollars (to the cent's millionth)."""
    assert set(block["phases"]) == set(stored["phases"]) == set(PHASES)
    for name in [*PHASES, "all"]:
        got = block["all"] if name == "all" else block["phases"][name]
        want = stored["all"] if name == "all" else stored["phases"][name]
        assert {k: got[k] for k in COUNTS} == {k: want[k] for k in COUNTS}, name
        assert got["llm_calls_by_role"] == want["llm_calls_by_role"], name
        assert got["cost_usd"] == pytest.approx(want["cost_usd"], abs=1e-8), name


def _assert_consistent_with_records(url: str, run_id: str, totals: dict) -> None:
    """The block against what the run recorded: all is the sum of the phases; the
    held-out phase is its test evaluations; the search phase's rollouts, task calls and
    cache hits are its other evaluations (no rollout failed); the cache's own count of
    hits by component covers every phase."""
    command = totals["command"]
    assert command["complete"] is True
    phases, every = command["phases"], command["all"]
    for key in ("rollouts", "replay_cache_hits", "tokens", "errors", "llm_calls"):
        assert every[key] == sum(phases[p][key] for p in PHASES), key
    assert every["cost_usd"] == pytest.approx(sum(phases[p]["cost_usd"] for p in PHASES))
    roles = {r for p in PHASES for r in phases[p]["llm_calls_by_role"]}
    assert every["llm_calls_by_role"] == {
        r: sum(phases[p]["llm_calls_by_role"].get(r, 0) for p in PHASES) for r in roles}
    assert every["llm_calls"] == sum(every["llm_calls_by_role"].values())
    with open_store(url).read() as conn:
        # a rollout read from a recorded production run (its trace is the example's)
        # was not run: no rollout of any phase
        rows = conn.execute(sa.text(
            "SELECT purpose = 'test', COUNT(*), SUM(llm_calls), SUM(cache_hits), "
            "SUM(tokens), SUM(cost_usd) FROM evaluations WHERE run_id = :id "
            "AND (trace_id IS NULL OR trace_id != example_id) "
            "GROUP BY purpose = 'test'"), {"id": run_id}).all()
        read = conn.execute(sa.text(
            "SELECT COUNT(*) FROM evaluations WHERE run_id = :id "
            "AND trace_id = example_id"), {"id": run_id}).scalar()
    assert totals.get("recorded_rollouts", 0) == read
    recorded = {bool(r[0]): r[1:] for r in rows}
    held = phases["held_out"]
    n, calls, hits, tokens, cost = recorded[True]
    assert (held["rollouts"], held["llm_calls_by_role"].get("task", 0),
            held["replay_cache_hits"]) == (n, calls, hits)
    # the feedback metric's judge calls are metered by the budget, not by the rollouts:
    # they add to the phase's tokens and dollars, never to its task calls
    judged = held["llm_calls_by_role"].get("judge", 0)
    assert held["tokens"] >= tokens and (held["tokens"] == tokens) == (judged == 0)
    assert held["cost_usd"] >= cost - 1e-9
    if not judged:
        assert held["cost_usd"] == pytest.approx(cost)
    search = phases["search"]
    n, calls, hits, _tokens, _cost = recorded[False]
    # failed rollouts are never evaluations, but they were run (and paid for)
    assert search["rollouts"] - search["errors"] == n
    assert search["replay_cache_hits"] == hits
    if not search["errors"]:
        assert search["llm_calls_by_role"]["task"] == calls
    assert search["llm_calls_by_role"]["reflection"] >= 1
    # each command's preflight: one seed rollout, one call to the reflection model
    commands = phases["preflight"]["rollouts"]
    assert commands >= 1 and phases["preflight"]["llm_calls_by_role"]["reflection"] == commands
    assert sum(totals["replay_cache_hits_by_component"].values()) == every["replay_cache_hits"]
    assert every["llm_calls_by_role"]["reflection"] == (
        totals["budget"]["llm_calls_by_role"]["reflection"])


def _assert_printed(text: str, block: dict) -> None:
    for line in spend_lines(block):
        assert line in text, line


def _assert_report_agrees(url: str, run_id: str, stored: dict) -> None:
    data = load_report_data(open_store(url), run_id)
    _assert_same(data.spent, stored)
    page = render_page(data)
    budget = re.search(r'<section id="budget">(.*?)</section>', page, re.DOTALL).group(1)
    for name in [*PHASES, "all"]:
        spend = stored["all"] if name == "all" else stored["phases"][name]
        column = [*PHASES, "all"].index(name)
        for label, value in (("rollouts (evaluator calls)", f"{spend['rollouts']:,}"),
                             ("LLM calls: total", f"{spend['llm_calls']:,}"),
                             ("LLM calls: task",
                              f"{spend['llm_calls_by_role'].get('task', 0):,}"),
                             ("replay cache hits (LLM calls served from the store)",
                              f"{spend['replay_cache_hits']:,}"),
                             ("tokens", f"{spend['tokens']:,}"),
                             ("dollars", f"${spend['cost_usd']:.4f}")):
            row = re.search(rf"<tr><td>{re.escape(label)}</td>(.*?)</tr>", budget).group(1)
            cells = re.findall(r'<td class="num">(.*?)</td>', row)
            assert cells[column] == value, (name, label)
    summary = re.search(r'<section id="summary">(.*?)</section>', page, re.DOTALL).group(1)
    assert f"{stored['all']['rollouts']:,}" in summary
    assert f"${stored['all']['cost_usd']:.4f}" in summary


def test_demo_summary_runs_show_report_and_stored_totals_agree(demo):
    url, summary = demo
    run_id = summary["run_id"]
    totals = _stored(url, run_id)
    stored = totals["command"]
    _assert_consistent_with_records(url, run_id, totals)

    every = stored["all"]
    assert (summary["rollouts"], summary["llm_calls"], summary["replay_cache_hits"],
            summary["tokens"]) == (every["rollouts"], every["llm_calls"],
                                   every["replay_cache_hits"], every["tokens"])
    assert summary["cost_usd"] == pytest.approx(every["cost_usd"], abs=1e-8)
    _assert_same(summary["spent"], stored)
    text = "\n".join(summary_lines(summary))
    assert (f"{every['rollouts']} rollouts, {every['llm_calls']} LLM calls sent, "
            f"{every['replay_cache_hits']} served by the replay cache, "
            f"${every['cost_usd']:.4f}") in text
    for line in spend_lines(stored)[1:]:
        assert line in text

    shown = _cli_json("runs", "show", run_id, "--store", url)
    _assert_same(shown["spent"], stored)
    assert shown["totals"]["command"] == stored
    listed = next(r for r in _cli_json("runs", "--store", url) if r["id"] == run_id)
    assert listed["rollouts"] == every["rollouts"]
    _assert_printed(_cli_text("runs", "show", run_id, "--store", url), stored)
    _assert_report_agrees(url, run_id, stored)


def test_optimize_json_and_text_summary_agree_with_runs_show_and_report(demo, nightly,
                                                                        capsys):
    url, _summary = demo
    run_id = nightly["run_id"]
    totals = _stored(url, run_id)
    stored = totals["command"]
    _assert_consistent_with_records(url, run_id, totals)
    _assert_same(nightly["spent"], stored)
    assert nightly["task_calls_sent"] == stored["all"]["llm_calls_by_role"]["task"]

    print_outcome(nightly)
    text = capsys.readouterr().out
    _assert_printed(text, stored)
    assert "errors      0 failed rollouts" in text
    _assert_same(_cli_json("runs", "show", run_id, "--store", url)["spent"], stored)
    _assert_printed(_cli_text("runs", "show", run_id, "--store", url), stored)
    _assert_report_agrees(url, run_id, stored)


APP = '''
import itertools

from gepa_trace.demo import build_agent as demo_agent

invocations = itertools.count()


class GoesDown:
    """The demo agent, whose model goes down after the preflight's one rollout."""

    def __init__(self, agent):
        self.agent = agent

    def invoke(self, *args, **kwargs):
        if next(invocations) >= 1:
            raise RuntimeError("task model down")
        return self.agent.invoke(*args, **kwargs)


def build_agent(prompts):
    return GoesDown(demo_agent(prompts))
'''


OPTIMIZE = ["optimize", "--agent", "demo-qa", "--metric", "gepa_trace.demo:metric",
            "--reflection-lm", "gepa-sim/reflect", "--budget-rollouts", "16"]


@pytest.fixture(scope="module")
def failed(demo, tmp_path_factory):
    """A run whose agent goes down after the preflight: it stops at the seed's
    validation (exit 7)."""
    url, _summary = demo
    app_dir = tmp_path_factory.mktemp("app")
    (app_dir / "down_app.py").write_text(APP)
    try:
        # replayed (not read from its recorded runs), the seed's validation is where the
        # agent going down first shows
        result = CliRunner().invoke(main, [
            *OPTIMIZE, "--entrypoint", "down_app:build_agent", "--app-dir", str(app_dir),
            "--no-recorded-runs", "--store", url])
    finally:
        _shutdown_instrumentation()
    return url, result


def test_a_run_that_failed_at_the_seeds_validation_prints_its_errors_and_spend(failed):
    url, result = failed
    assert result.exit_code == 7, result.output
    out = result.stdout
    run_id = re.search(r"^run (\S+)", out, re.MULTILINE).group(1)
    assert "FAILED      candidate 0 on example " in out and "task model down" in out
    assert "validation  seed - -> best - " in out
    errors = re.search(r"^errors      (\d+) failed rollouts, (\d+) retries", out, re.MULTILINE)
    assert int(errors.group(1)) >= 1 and int(errors.group(2)) >= 2
    assert "first: candidate 0 on example" in out
    stored = _stored(url, run_id)["command"]
    assert stored["phases"]["search"]["errors"] == int(errors.group(1))
    assert stored["phases"]["held_out"]["rollouts"] == 0
    _assert_printed(out, stored)

    listed = next(r for r in _cli_json("runs", "--store", url) if r["id"] == run_id)
    assert listed["status"] == "failed"
    shown = _cli_text("runs", "show", run_id, "--store", url)
    assert f"run {run_id}  agent demo-qa  failed" in shown
    assert f"errors      {errors.group(1)} failed rollouts" in shown
    _assert_printed(shown, stored)


def test_a_resumed_run_adds_each_commands_spend_and_still_agrees(failed):
    url, first = failed
    run_id = re.search(r"^run (\S+)", first.stdout, re.MULTILINE).group(1)
    before = _stored(url, run_id)["command"]
    try:
        summary = _cli_json(*OPTIMIZE, "--entrypoint", "gepa_trace.demo:build_agent",
                            "--resume", run_id, "--store", url)
    finally:
        _shutdown_instrumentation()
    assert summary["run_id"] == run_id and summary["failed_with"] is None
    totals = _stored(url, run_id)
    stored = totals["command"]
    _assert_consistent_with_records(url, run_id, totals)
    _assert_same(summary["spent"], stored)
    # two commands, two preflights; the failed command's errors stay in the search
    assert stored["phases"]["preflight"]["rollouts"] == 2
    assert stored["phases"]["search"]["errors"] == before["phases"]["search"]["errors"] > 0
    # the budget holds both preflights' calls too (its limits cover every command)
    assert stored["phases"]["search"]["llm_calls_by_role"]["reflection"] == (
        totals["budget"]["llm_calls_by_role"]["reflection"] - 2)
    _assert_report_agrees(url, run_id, stored)
