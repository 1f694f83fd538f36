"""The UI's examples page lists what `gepa-trace examples` lists, and its marks are
the ones the command sets (exclude, golden, include)."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from ui_store import AGENT, build, client

from gepa_trace.cli import main


@pytest.fixture
def store(sqlite_url):
    return sqlite_url, build(sqlite_url)


@pytest.fixture
def ui(store):
    return client(store[0])


def cli_examples(url: str) -> dict:
    result = CliRunner().invoke(main, ["examples", "--agent", AGENT, "--store", url, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def page_rows(page: str) -> dict[str, str]:
    """trace id -> the split cell of each row."""
    return dict(re.findall(r'data-trace="([0-9a-f]{32})">\s*<td[^>]*><a[^>]*>[^<]*</a></td>\s*'
                           r"<td>([^<]*)</td>", page))


def test_examples_page_lists_the_runs_and_splits_the_command_lists(store, ui):
    url, _ = store
    expected = {r["trace_id"]: r["split"] for r in cli_examples(url)["examples"]}
    shown = page_rows(ui.get(f"/examples?agent={AGENT}").text)
    assert {t: s for t, s in shown.items() if not s.startswith("left out")} == expected


def test_marks_set_in_the_ui_are_what_examples_reports(store, ui):
    url, ids = store
    page = ui.get(f"/examples?agent={AGENT}").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)

    def mark(action: str) -> None:
        answer = ui.post("/examples/mark", data={"trace_id": ids["good"], "action": action,
                                                 "csrf": csrf, "back": "//evil.example/x"},
                         follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/examples"

    mark("exclude")
    left = {r["trace_id"]: r for r in cli_examples(url)["left_out"]}
    assert left[ids["good"]]["reason"] == "excluded"
    assert "left out: excluded by the user" in ui.get(f"/examples?agent={AGENT}").text
    mark("golden")
    assert {r["trace_id"]: r["split"] for r in cli_examples(url)["examples"]}[ids["good"]] == "val"
    mark("include")
    assert all(r["mark"] is None for r in cli_examples(url)["examples"])
    bad = ui.post("/examples/mark", data={"trace_id": ids["good"], "action": "delete",
                                          "csrf": csrf})
    assert bad.status_code == 400
