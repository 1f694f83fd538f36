"""Components, diffs and promotion in the UI: the export gate's verdict and the review's
flags are shown before a promotion, which needs an explicit approval of flagged changes
(exactly as `prompts promote --approve`) and leaves the alias where `prompts ls` sees it."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner
from starlette.testclient import TestClient
from test_review import build_run, poisoned_run
from ui_store import client

from gepa_trace.cli import main
from gepa_trace.prompts.registry import alias_history
from gepa_trace.prompts.review import approvals, review_run
from gepa_trace.store import open_store
from gepa_trace.ui import UiSettings, create_app


def aliases(url: str) -> dict[str, list[str]]:
    result = CliRunner().invoke(main, ["prompts", "ls", "--json", "--store", url])
    assert result.exit_code == 0, result.output
    return {f"{v['component']}@{v['version']}": v["aliases"] for v in json.loads(result.stdout)}


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_promoting_a_flagged_version_shows_gate_and_flags_and_needs_approval(sqlite_url):
    run_id = poisoned_run(sqlite_url)
    version = review_run(open_store(sqlite_url), run_id).best_flags[0].version
    ui = client(sqlite_url)
    page = ui.get(f"/prompts/answerer/{version}/promote").text
    assert 'id="gate-verdict"' in page and "Significant: held-out gain" in page
    assert "flagged change(s) need a person's approval" in page and "evil.example" in page
    assert 'name="approve"' in page
    form = {"component": "answerer", "version": version, "alias": "production",
            "csrf": csrf_of(page)}
    refused = ui.post("/prompts/promote", data=form)
    assert refused.status_code == 409 and "promote refused" in refused.text
    assert aliases(sqlite_url)[f"answerer@{version}"] == []
    done = ui.post("/prompts/promote", data={**form, "approve": "1"})
    assert done.status_code == 200 and f"answerer: production → {version}" in done.text
    assert aliases(sqlite_url)[f"answerer@{version}"] == ["production"]
    (approval,) = approvals(open_store(sqlite_url), run_id)
    assert approval["versions"] == {"answerer": version}
    (change,) = alias_history(open_store(sqlite_url))
    assert (change.alias, change.version, change.previous, change.actor) == (
        "production", version, None, "ui")
    assert 'class="alias-change"' in done.text


def test_alias_history_records_who_changed_it_from_what_and_when(sqlite_url):
    run_id = build_run(sqlite_url, "Name the city.")
    best = json.loads(CliRunner().invoke(main, ["runs", "show", run_id, "--json", "--store",
                                                sqlite_url]).stdout)["best"]["prompts"]
    seed = next(v.split("@")[1] for v in aliases(sqlite_url)
                if v.startswith("answerer@") and not v.endswith(best["answerer"]))
    assert CliRunner().invoke(main, ["prompts", "promote", "answerer", seed,
                                     "--store", sqlite_url]).exit_code == 0
    ui = TestClient(create_app(UiSettings(store=sqlite_url, token="t")),
                    base_url="http://127.0.0.1", headers={"Authorization": "Bearer t"})
    page = ui.get(f"/prompts/answerer/{best['answerer']}/promote").text
    done = ui.post("/prompts/promote", data={"component": "answerer",
                                             "version": best["answerer"],
                                             "csrf": csrf_of(page)})
    assert done.status_code == 200
    first, newest = alias_history(open_store(sqlite_url), component="answerer")
    assert (first.previous, first.version) == (None, seed)
    assert (newest.actor, newest.previous, newest.version) == (
        "ui (token holder)", seed, best["answerer"])
    assert newest.created_at >= first.created_at and "ui (token holder)" in done.text


def test_a_version_whose_gain_is_not_significant_needs_promote_anyway(sqlite_url):
    run_id = build_run(sqlite_url, "Name the city.", gain=False)
    best = json.loads(CliRunner().invoke(main, ["runs", "show", run_id, "--json", "--store",
                                                sqlite_url]).stdout)["best"]["prompts"]
    version = best["answerer"]
    ui = client(sqlite_url)
    page = ui.get(f"/prompts/answerer/{version}/promote").text
    assert "Not significant" in page and 'name="force"' in page
    form = {"component": "answerer", "version": version, "csrf": csrf_of(page)}
    refused = ui.post("/prompts/promote", data=form)
    assert refused.status_code == 409 and "promote refused: held-out gain" in refused.text
    assert aliases(sqlite_url)[f"answerer@{version}"] == []
    assert ui.post("/prompts/promote", data={**form, "force": "1"}).status_code == 200
    assert aliases(sqlite_url)[f"answerer@{version}"] == ["production"]


def test_a_run_version_other_than_its_best_needs_promote_anyway(sqlite_url):
    from gepa_trace.prompts.promptset import PromptSet
    from gepa_trace.prompts.registry import record_versions

    run_id = build_run(sqlite_url, "Name the city.")  # significant gain, nothing flagged
    other = PromptSet({"answerer": [{"role": "system", "content": "A rejected child."}]},
                      agent="qa")
    record_versions(open_store(sqlite_url), other, run_id=run_id, candidate_id=7)
    version = other.versions()["answerer"]
    ui = client(sqlite_url)
    page = ui.get(f"/prompts/answerer/{version}/promote").text
    assert "Significant" in page and "not in the run&#39;s best candidate" not in page
    assert "not in the run's best candidate" in page and 'name="force"' in page
    form = {"component": "answerer", "version": version, "csrf": csrf_of(page)}
    refused = ui.post("/prompts/promote", data=form)
    assert refused.status_code == 409 and "not the run&#39;s best candidate" in refused.text
    assert ui.post("/prompts/promote", data={**form, "force": "1"}).status_code == 200
    assert aliases(sqlite_url)[f"answerer@{version}"] == ["production"]


def test_components_page_shows_versions_text_and_the_diff_is_escaped(sqlite_url):
    run_id = poisoned_run(sqlite_url)
    version = review_run(open_store(sqlite_url), run_id).best_flags[0].version
    ui = client(sqlite_url)
    page = ui.get("/components").text
    assert 'id="component-answerer"' in page and version[:12] in page
    seed = next(v.split("@")[1] for v in aliases(sqlite_url)
                if v.startswith("answerer@") and not v.endswith(version))
    diff = ui.get(f"/components/diff?a={seed[:6]}&b={version}")
    assert diff.status_code == 200 and "<ins>" in diff.text
    assert ui.get("/components/diff?a=ffff&b=eeee").status_code == 404
    assert "<script>" not in ui.get("/prompts").text


def test_rolling_back_an_alias_change_in_the_ui_points_it_where_it_was(sqlite_url):
    run_id = build_run(sqlite_url, "Name the city.")
    best = json.loads(CliRunner().invoke(main, ["runs", "show", run_id, "--json", "--store",
                                                sqlite_url]).stdout)["best"]["prompts"]
    seed = next(v.split("@")[1] for v in aliases(sqlite_url)
                if v.startswith("answerer@") and not v.endswith(best["answerer"]))
    for version in (seed, best["answerer"]):
        assert CliRunner().invoke(main, ["prompts", "promote", "answerer", version,
                                         "--store", sqlite_url]).exit_code == 0
    promoted = alias_history(open_store(sqlite_url), component="answerer")[-1]
    ui = client(sqlite_url)
    assert f'href="/prompts/changes/{promoted.id}/revert"' in ui.get("/prompts").text
    page = ui.get(f"/prompts/changes/{promoted.id}/revert").text
    assert "Rolling it back points production at" in page and seed in page
    assert ui.post("/prompts/revert", data={"change": str(promoted.id)}).status_code == 403
    done = ui.post("/prompts/revert", data={"change": str(promoted.id),
                                           "csrf": csrf_of(page)})
    assert done.status_code == 200 and f"answerer: production → {seed}" in done.text
    assert aliases(sqlite_url)[f"answerer@{seed}"] == ["production"]
    rollback = alias_history(open_store(sqlite_url), component="answerer")[-1]
    assert (rollback.previous, rollback.version, rollback.actor, rollback.reason) == (
        best["answerer"], seed, "ui", f"revert of change {promoted.id}")
    read_only = client(sqlite_url, read_only=True)
    assert "roll back" not in read_only.get("/prompts").text
    assert read_only.post("/prompts/revert", data={"change": "1"}).status_code in (404, 405)
