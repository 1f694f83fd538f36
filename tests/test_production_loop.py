"""The production loop (issue 21, acceptance 1): a simulated production over several
nights. The optimized prompts run as a 20% canary while feedback flows; the nightly
policy promotes them once production feedback says they are better; a worse version
promoted by hand is rolled back by the policy; every step is in `prompts history`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from production_traffic import as_agents, serve, set_alias

from gepa_trace.cli import main as cli
from gepa_trace.demo import AGENT_NAME, BEST_PROMPTS, SEED_PROMPTS
from gepa_trace.prompts.registry import prompts_for_alias
from gepa_trace.prompts.sequential import MIN_RUNS
from gepa_trace.store import open_store


def _watch(url: str) -> list[dict]:
    result = CliRunner().invoke(cli, ["watch", "--agent", AGENT_NAME, "--store", url,
                                      "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["actions"]


def test_a_better_canary_is_promoted_and_a_worse_promotion_rolled_back_by_the_policy(
        sqlite_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store(sqlite_url, create=True)
    seed, best = as_agents(SEED_PROMPTS), as_agents(BEST_PROMPTS)
    set_alias(store, seed, "production")
    set_alias(store, best, "candidate")

    # nights of traffic with the optimized prompts on a 20% canary, the policy after each
    nights = 0
    while True:
        nights += 1
        assert nights <= 4, "the policy never promoted a much better canary"
        serve(sqlite_url, 100, seed=nights, fraction=0.2, tmp_path=tmp_path, rated=1.0)
        status = CliRunner().invoke(cli, ["canary", "status", "--agent", AGENT_NAME,
                                          "--store", sqlite_url, "--json"])
        decided = json.loads(status.output)
        actions = _watch(sqlite_url)
        if any(a["kind"] == "promote-canary" for a in actions):
            break
        assert decided["decision"] in ("too few runs", "undecided")
    assert decided["decision"] == "better" and decided["low"] > 0
    assert decided["canary_runs"] >= MIN_RUNS
    assert prompts_for_alias(store, "production", AGENT_NAME).versions() == best.versions()

    # a worse version promoted by hand ...
    for name in seed:
        result = CliRunner().invoke(cli, ["prompts", "promote", name,
                                          seed.version_of(name).version, "--store",
                                          sqlite_url])
        assert result.exit_code == 0, result.output
    # ... is rolled back within MIN_RUNS rated runs of it (60 a night here)
    rolled_back_after = 0
    while True:
        rolled_back_after += 1
        assert rolled_back_after <= 2, "the policy never rolled back a worse promotion"
        serve(sqlite_url, 60, seed=100 + rolled_back_after, fraction=0.2,
              tmp_path=tmp_path, rated=1.0)
        actions = _watch(sqlite_url)
        if any(a["kind"] == "rollback-promotion" for a in actions):
            break
    revert = next(a for a in actions if a["kind"] == "rollback-promotion")
    assert revert["comparison"]["decision"] == "worse"
    assert revert["comparison"]["compared"] == "before/after the promotion"
    assert prompts_for_alias(store, "production", AGENT_NAME).versions() == best.versions()

    # every step is in the history, with who did it and the numbers it acted on
    history = json.loads(CliRunner().invoke(cli, ["prompts", "history", "--agent",
                                                  AGENT_NAME, "--store", sqlite_url,
                                                  "--json"]).output)
    component = "answerer"
    steps = [(c["alias"], c["version"], c["actor"].split(" ")[0], c["reason"])
             for c in history if c["component"] == component]
    s, b = seed.version_of(component).version, best.version_of(component).version
    assert [(alias, version) for alias, version, _who, _why in steps] == [
        ("production", s), ("candidate", b),              # set up
        ("production", b), ("candidate", None),           # the policy promotes the canary
        ("production", s),                                # a person promotes a worse one
        ("production", b)]                                # the policy rolls it back
    assert steps[2][2] == steps[3][2] == steps[5][2] == "nightly"
    policy = [c for c in history if c["actor"].startswith("nightly")]
    assert all(c["evidence"].get("decision") in ("better", "worse") for c in policy)

    # and any of its actions can be undone by hand
    last = [c for c in history if c["component"] == component][-1]
    undo = CliRunner().invoke(cli, ["prompts", "revert", str(last["id"]), "--store",
                                    sqlite_url])
    assert undo.exit_code == 0, undo.output
    versions = prompts_for_alias(store, "production", AGENT_NAME).versions()
    assert versions[component] == s


def test_watch_without_a_canary_or_a_fresh_promotion_does_nothing(sqlite_url, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store(sqlite_url, create=True)
    set_alias(store, as_agents(SEED_PROMPTS), "production")
    result = CliRunner().invoke(cli, ["watch", "--agent", AGENT_NAME, "--store", sqlite_url])
    assert result.exit_code == 0, result.output
    assert "nothing to judge" in result.output
