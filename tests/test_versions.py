"""`gepa-trace versions` (issue 21, acceptance 3): each prompt version's production
figures, checked against a direct computation from the stored spans and feedback."""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from gepa_trace.cli import main as cli
from gepa_trace.demo import AGENT_NAME, BEST_PROMPTS, SEED_PROMPTS
from gepa_trace.demo.traffic import run_traffic
from gepa_trace.prompts.production import mean_interval

WEIGHT = {"reviewer": 2.0, "automated": 1.0, "user": 1.0}


@pytest.fixture(scope="module")
def two_versions_store(tmp_path_factory):
    """40 runs of the demo agent with its seed prompts, then 40 with better prompts."""
    from instrumented import instrumentation_shut_down

    url = f"sqlite:///{tmp_path_factory.mktemp('versions') / 'store.db'}"
    run_traffic(40, store=url, seed=1, feedback_rate=0.8, noise=0.0, review_rate=0.2)
    run_traffic(40, store=url, seed=2, feedback_rate=0.8, noise=0.0, review_rate=0.2,
                prompts=BEST_PROMPTS)
    instrumentation_shut_down()
    return url


def _direct(url: str) -> dict[tuple[str, str], dict]:
    """Runs, rated runs and mean score per (component, version), straight from SQL."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        production = set(conn.execute(sa.text(
            "SELECT trace_id FROM spans WHERE parent_span_id IS NULL AND agent = :a "
            "AND run_id IS NULL"), {"a": AGENT_NAME}).scalars())
        calls = conn.execute(sa.text(
            "SELECT DISTINCT trace_id, component, prompt_version FROM spans "
            "WHERE span_type = 'llm' AND component IS NOT NULL")).all()
        feedback = conn.execute(sa.text(
            "SELECT trace_id, score, score_low, score_high, source FROM feedback "
            "WHERE replaced_by IS NULL AND span_id IS NULL AND score IS NOT NULL")).all()
    engine.dispose()
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for trace_id, score, low, high, source in feedback:
        low, high = low or 0.0, 1.0 if high is None else high
        sums[trace_id][0] += WEIGHT[source] * (score - low) / (high - low)
        sums[trace_id][1] += WEIGHT[source]
    run_score = {t: s / w for t, (s, w) in sums.items()}
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for trace_id, component, version in calls:
        if trace_id in production:
            found[(component, version)].add(trace_id)
    return {key: {"runs": len(ids),
                  "rated": [run_score[t] for t in ids if t in run_score]}
            for key, ids in found.items()}


def test_versions_json_agrees_with_the_spans_and_feedback(two_versions_store):
    result = CliRunner().invoke(cli, ["versions", "--agent", AGENT_NAME, "--store",
                                      two_versions_store, "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    direct = _direct(two_versions_store)
    assert {(f["component"], f["version"]) for f in figures} == set(direct)
    for f in figures:
        expected = direct[(f["component"], f["version"])]
        assert f["runs"] == expected["runs"]
        assert f["runs_with_feedback"] == len(expected["rated"])
        assert f["score"]["mean"] == pytest.approx(statistics.fmean(expected["rated"]))
        score = f["score"]
        assert score["low"] <= score["mean"] <= score["high"] and score["low"] < score["high"]
        assert f["cost_per_run_usd"] is not None and f["cost_per_run_usd"] > 0
        assert f["latency_ms_p50"] > 0 and f["first_seen"] <= f["last_seen"]
    # both prompt sets ran 40 times; a component whose prompt differs has two versions
    seed, best = SEED_PROMPTS.versions(), BEST_PROMPTS.versions()
    changed = [c for c in seed if seed[c] != best[c]]
    assert changed
    by_key = {(f["component"], f["version"]): f for f in figures}
    for component in changed:
        assert by_key[(component, seed[component])]["runs"] == 40
        assert by_key[(component, best[component])]["runs"] == 40
    # the better prompts get better feedback from the same simulated users
    c = changed[0]
    assert by_key[(c, best[c])]["score"]["mean"] > by_key[(c, seed[c])]["score"]["mean"]


def test_versions_table_names_each_version_with_its_interval(two_versions_store):
    result = CliRunner().invoke(cli, ["versions", "--agent", AGENT_NAME, "--store",
                                      two_versions_store])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split()[:4] == ["component", "version", "runs", "feedback"]
    assert len(rows) == len(_direct(two_versions_store))
    assert all("[" in row and "]" in row for row in rows)


def test_versions_of_an_agent_with_no_runs_says_so_on_stderr(two_versions_store):
    result = CliRunner().invoke(cli, ["versions", "--agent", "nobody", "--store",
                                      two_versions_store])
    assert result.exit_code == 0
    assert "no production runs of agent nobody" in result.output


def test_a_mean_interval_widens_with_spread_and_narrows_with_runs():
    assert mean_interval([]).mean is None
    one = mean_interval([1.0])
    assert one.mean == one.high == 1.0 and one.low < 0.25  # one thumbs up says little
    twelve = mean_interval([1.0] * 12)
    assert 0.7 < twelve.low < 0.8 and twelve.high == 1.0
    few = mean_interval([0.0, 1.0, 1.0, 0.0])
    many = mean_interval([0.0, 1.0, 1.0, 0.0] * 25)
    assert few.mean == many.mean == 0.5
    assert (few.high - few.low) > (many.high - many.low) > 0
    assert 0.0 <= few.low and few.high <= 1.0
