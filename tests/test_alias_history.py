"""Every alias change is an immutable record (issue 21): `gepa-trace prompts history`
shows how an alias got where it is, who moved it, why, and on what evidence."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from gepa_trace.cli import main as cli
from gepa_trace.demo import AGENT_NAME, BEST_PROMPTS, SEED_PROMPTS
from gepa_trace.prompts import PromptSet
from gepa_trace.prompts.registry import alias_history, promote, record_versions
from gepa_trace.store import open_store

FIXTURE = Path(__file__).parent / "fixtures" / "store_first_schema.sqlite"


def _record(store, prompts: PromptSet) -> PromptSet:
    prompts = PromptSet({n: prompts.version_of(n) for n in prompts}, agent=AGENT_NAME)
    record_versions(store, prompts, origin="file")
    return prompts


def _history(url: str, *args: str) -> list[dict]:
    result = CliRunner().invoke(cli, ["prompts", "history", *args, "--store", url, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_each_promotion_and_canary_step_is_one_record_in_order(sqlite_url):
    store = open_store(sqlite_url, create=True)
    seed, best = _record(store, SEED_PROMPTS), _record(store, BEST_PROMPTS)
    component = "answerer"
    old, new = seed.version_of(component).version, best.version_of(component).version
    run = CliRunner()
    for version, alias in ((old, "production"), (old, "production"), (new, "candidate")):
        result = run.invoke(cli, ["prompts", "promote", component, version, "--alias", alias,
                                  "--store", sqlite_url])
        assert result.exit_code == 0, result.output
    result = run.invoke(cli, ["canary", "promote", "--agent", AGENT_NAME, "--store",
                              sqlite_url])
    assert result.exit_code == 0, result.output

    changes = _history(sqlite_url, "--component", component)
    steps = [(c["alias"], c["previous"], c["version"]) for c in changes]
    assert steps == [("production", None, old),          # promoting again records nothing
                     ("candidate", None, new),
                     ("production", old, new),           # the canary promoted ...
                     ("candidate", new, None)]           # ... and its alias removed
    assert all("via gepa-trace" in c["actor"] for c in changes)
    assert changes[0]["actor"].endswith("prompts promote")
    assert changes[2]["actor"].endswith("canary promote")
    assert changes[2]["reason"] == "canary candidate promoted"
    assert changes[2]["evidence"]["decision"] == "too few runs"  # what it acted on
    assert [c["created_at"] for c in changes] == sorted(c["created_at"] for c in changes)
    assert _history(sqlite_url, "production", "--component", component) == \
        [c for c in changes if c["alias"] == "production"]

    text = run.invoke(cli, ["prompts", "history", "production", "--store", sqlite_url])
    assert text.exit_code == 0
    assert f"answerer  production: (unset) -> {old}" in text.output
    assert f"answerer  production: {old} -> {new}" in text.output


def test_a_rollback_is_recorded_and_earlier_records_never_change(sqlite_url):
    store = open_store(sqlite_url, create=True)
    seed, best = _record(store, SEED_PROMPTS), _record(store, BEST_PROMPTS)
    for name in seed:
        promote(store, name, seed.version_of(name).version, actor="test")
        promote(store, name, best.version_of(name).version, alias="candidate", actor="test")
    before = [c.to_dict() for c in alias_history(store)]
    result = CliRunner().invoke(cli, ["canary", "rollback", "--agent", AGENT_NAME,
                                      "--store", sqlite_url])
    assert result.exit_code == 0, result.output
    after = [c.to_dict() for c in alias_history(store)]
    assert after[:len(before)] == before
    rolled = after[len(before):]
    assert {(c["alias"], c["version"]) for c in rolled} == {("candidate", None)}
    assert {c["component"] for c in rolled} == set(seed)
    assert all(c["reason"] == "canary rolled back" for c in rolled)


def test_aliases_set_before_history_was_kept_start_with_a_record_saying_so(tmp_path):
    path = tmp_path / "old.db"
    shutil.copyfile(FIXTURE, path)
    changes = _history(f"sqlite:///{path}")
    assert changes and all(c["actor"] == "unknown" and c["previous"] is None
                           for c in changes)
    assert {c["alias"] for c in changes} == {"production"}
    assert changes[0]["reason"] == "set before gepa-trace kept alias history"
