"""Canary releases (issue 21): a stable share of users on the candidate alias, the
alias recorded on each run's root span, and `canary status` judging it on production
feedback with a test that may be read every night."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from production_traffic import as_agents, serve, set_alias

import gepa_trace as gt
from gepa_trace.cli import main as cli
from gepa_trace.demo import AGENT_NAME, BEST_PROMPTS, SEED_PROMPTS
from gepa_trace.errors import ConfigError
from gepa_trace.prompts.canary import in_canary
from gepa_trace.prompts.registry import prompts_for_alias
from gepa_trace.prompts.sequential import compare
from gepa_trace.store import open_store


@pytest.fixture
def canary_store(sqlite_url, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # load_prompts writes its fallback files here
    store = open_store(sqlite_url, create=True)
    set_alias(store, as_agents(SEED_PROMPTS), "production")
    set_alias(store, as_agents(BEST_PROMPTS), "candidate")
    return sqlite_url


def test_a_canary_share_is_stable_per_key_and_close_to_its_fraction():
    keys = [f"user-{i}" for i in range(20_000)]
    share = sum(in_canary(k, 0.1, "candidate") for k in keys) / len(keys)
    assert 0.09 < share < 0.11
    assert [in_canary(k, 0.1, "candidate") for k in keys[:50]] == \
        [in_canary(k, 0.1, "candidate") for k in keys[:50]]
    assert not any(in_canary(k, 0.0, "candidate") for k in keys[:500])
    assert all(in_canary(k, 1.0, "candidate") for k in keys[:500])
    # a wider share keeps every key of the narrower one (a ramp moves no one back)
    assert all(in_canary(k, 0.3, "candidate") for k in keys if in_canary(k, 0.1, "candidate"))
    with pytest.raises(ConfigError, match="between 0 and 1"):
        in_canary("u", 1.5, "candidate")


def test_a_canary_without_a_key_is_refused_by_name(canary_store):
    with pytest.raises(ConfigError, match="key="):
        gt.load_prompts("production", canary_store, agent=AGENT_NAME, canary="candidate",
                        fraction=0.2)


def test_a_better_canary_is_routed_recorded_and_found_better(canary_store, tmp_path):
    routed = serve(canary_store, 180, seed=5, fraction=0.35, tmp_path=tmp_path)
    counts = {a: list(routed.values()).count(a) for a in ("candidate", "production")}
    assert counts["candidate"] + counts["production"] == 180
    assert 45 <= counts["candidate"] <= 85
    result = CliRunner().invoke(cli, ["canary", "status", "--agent", AGENT_NAME,
                                      "--store", canary_store, "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["decision"] == "better", status
    assert status["low"] > 0 and status["canary_mean"] > status["control_mean"]
    assert status["canary_runs"] + status["control_runs"] < 180  # only rated runs count
    assert status["unassigned_runs"] == 0
    text = CliRunner().invoke(cli, ["canary", "status", "--agent", AGENT_NAME,
                                    "--store", canary_store])
    assert "valid at every look: better" in text.output

    promoted = CliRunner().invoke(cli, ["canary", "promote", "--agent", AGENT_NAME,
                                        "--store", canary_store])
    assert promoted.exit_code == 0, promoted.output
    store = open_store(canary_store)
    assert prompts_for_alias(store, "production", AGENT_NAME).versions() == \
        BEST_PROMPTS.versions()
    with pytest.raises(LookupError):
        prompts_for_alias(store, "candidate", AGENT_NAME)


def test_an_a_a_canary_is_told_apart_by_the_root_span_and_stays_undecided(
        sqlite_url, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    store = open_store(sqlite_url, create=True)
    set_alias(store, as_agents(SEED_PROMPTS), "production")
    set_alias(store, as_agents(SEED_PROMPTS), "candidate")
    routed = serve(sqlite_url, 120, seed=6, fraction=0.5, tmp_path=tmp_path)
    assert set(routed.values()) == {"candidate", "production"}
    result = CliRunner().invoke(cli, ["canary", "status", "--agent", AGENT_NAME,
                                      "--store", sqlite_url, "--json"])
    status = json.loads(result.output)
    assert status["differing_components"] == []
    assert status["unassigned_runs"] == 0 and status["canary_runs"] > 30
    assert status["decision"] == "undecided"


def test_an_unset_canary_alias_sends_everyone_to_production_with_one_warning(
        sqlite_url, monkeypatch, tmp_path, caplog):
    monkeypatch.chdir(tmp_path)
    store = open_store(sqlite_url, create=True)
    set_alias(store, as_agents(SEED_PROMPTS), "production")
    with caplog.at_level(logging.WARNING, logger="gepa_trace.prompts.registry"):
        loaded = [gt.load_prompts("production", sqlite_url, agent=AGENT_NAME,
                                  canary="nightly-canary", fraction=1.0, key=f"u{i}")
                  for i in range(3)]
    assert all(p.versions() == SEED_PROMPTS.versions() for p in loaded)
    assert sum("nightly-canary" in r.message for r in caplog.records) == 1


def test_rollback_removes_the_canary_alias_and_traffic_returns_to_production(
        canary_store, tmp_path):
    result = CliRunner().invoke(cli, ["canary", "rollback", "--agent", AGENT_NAME,
                                      "--store", canary_store, "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["removed"]) == set(BEST_PROMPTS)
    prompts = gt.load_prompts("production", canary_store, agent=AGENT_NAME,
                              canary="candidate", fraction=1.0, key="anyone")
    assert prompts.versions() == SEED_PROMPTS.versions()


def test_the_sequential_test_needs_enough_runs_and_says_worse_when_it_is():
    assert compare([1.0] * 10, [0.0] * 10).decision == "too few runs"
    worse = compare([0.0] * 40 + [1.0] * 10, [1.0] * 40 + [0.0] * 10)
    assert worse.decision == "worse" and worse.high < 0


def test_status_without_a_production_alias_compares_with_what_production_runs(
        sqlite_url, monkeypatch, tmp_path):
    """An agent whose production prompts live in its code has no production alias: the
    canary is compared with the versions most of its recent runs carried."""
    from instrumented import instrumentation_shut_down

    from gepa_trace.demo.traffic import run_traffic

    monkeypatch.chdir(tmp_path)
    run_traffic(40, store=sqlite_url, seed=2, feedback_rate=1.0, noise=0.0, review_rate=0.0,
                prompts=BEST_PROMPTS)
    run_traffic(70, store=sqlite_url, seed=1, feedback_rate=1.0, noise=0.0, review_rate=0.0)
    instrumentation_shut_down()
    set_alias(open_store(sqlite_url), as_agents(BEST_PROMPTS), "candidate")
    result = CliRunner().invoke(cli, ["canary", "status", "--agent", AGENT_NAME,
                                      "--store", sqlite_url, "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["control_versions"] == SEED_PROMPTS.versions()
    assert (status["canary_runs"], status["control_runs"]) == (40, 70)
    assert status["decision"] == "better"
