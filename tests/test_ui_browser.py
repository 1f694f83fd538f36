"""Acceptance 1 of issue 20, in headless Chromium (Playwright driving the system's
Chromium, offline) on a demo store: open the traces list, filter to runs with negative
feedback, open one, read its messages, add a correction and see it in `gepa-trace
examples`; open a run and its diff; promote a prompt and see the alias change in
`gepa-trace prompts ls`. No page logs a console error or throws.

Never skipped silently: without a Chromium the test fails saying so (``.ci/run``
installs Debian's), unless GEPA_TRACE_ALLOW_NO_BROWSER=1 says this machine has none.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time

import pytest
from click.testing import CliRunner
from instrumented import instrumentation_shut_down

from gepa_trace.cli import main
from gepa_trace.report.browser import find_chromium

CORRECTION = "The founder was Ada Staidei, in 1956."


def _chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("GEPA_TRACE_ALLOW_NO_BROWSER") == "1":
            pytest.skip("no Chromium and GEPA_TRACE_ALLOW_NO_BROWSER=1")
        pytest.fail("no Chromium on PATH (apt-get install chromium): the UI's browser "
                    "tests need one")
    return path


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("ui-demo")
    with instrumentation_shut_down():
        # a traffic seed whose 30-rollout run finds a best that is not the seed (a diff)
        result = CliRunner().invoke(main, ["demo", "--out", str(out), "--runs", "30",
                                           "--budget-rollouts", "30", "--seed", "1",
                                           "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    return f"sqlite:///{out / 'demo.db'}", summary["run_id"]


@pytest.fixture(scope="module")
def server(demo_store):
    import uvicorn

    from gepa_trace.ui import UiSettings, create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(UiSettings(store=demo_store[0])), host="127.0.0.1",
                            port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable,
                                      args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A page that records console errors, page errors and requests outside the UI."""
    context = browser.new_context(base_url=server, viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.problems = []
    tab.on("console", lambda m: m.type == "error" and tab.problems.append(m.text))
    tab.on("pageerror", lambda e: tab.problems.append(str(e)))
    tab.on("request", lambda r: r.url.startswith(server) or r.url.startswith("data:")
           or tab.problems.append(f"outside request {r.url}"))
    tab.set_default_timeout(15_000)
    yield tab
    context.close()


def cli(url: str, *args: str) -> dict | list:
    result = CliRunner().invoke(main, [*args, "--store", url, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_review_a_negative_run_and_correct_it(page, demo_store):
    url, _ = demo_store
    page.goto("/traces")
    assert page.locator("tr.run").count() > 0
    page.select_option("select[name=feedback]", "negative")
    page.click("#trace-filters button[type=submit]")
    page.wait_for_url(re.compile(r"feedback=negative"))
    rows = page.locator("tr.run")
    assert rows.count() > 0
    page.locator("tr.run a").first.click()
    page.wait_for_url(re.compile(r"/traces/[0-9a-f]{32}$"))
    trace_id = page.url.rsplit("/", 1)[1]
    messages = page.locator("pre.message")
    assert messages.count() > 0
    assert "question" in page.locator("#calls").inner_text().lower()
    page.fill("#feedback-form input[name=score]", "0")
    page.fill("#feedback-form textarea[name=expected]", CORRECTION)
    page.fill("#feedback-form textarea[name=comment]", "wrong year format")
    page.click("#feedback-form button[type=submit]")
    page.wait_for_selector("#saved")
    assert CORRECTION in page.locator("#feedback-table").inner_text()
    listed = cli(url, "examples", "--agent", "demo-qa")
    rows = {r["trace_id"]: r for r in listed["examples"] + listed["left_out"]}
    assert rows[trace_id].get("expected") == CORRECTION
    assert page.problems == []


def test_open_a_run_and_its_diff(page, demo_store):
    _, run_id = demo_store
    page.goto("/runs")
    page.click(f"a[href='/runs/{run_id}']")
    page.wait_for_selector("#diffs")
    assert page.locator("#diffs table.diff").count() > 0
    assert page.locator("#score-vs-rollouts svg").count() == 1
    page.goto("/components")
    page.locator("section.component form button").first.click()
    page.wait_for_selector("#diff table.diff")
    assert page.problems == []


def test_promote_a_prompt_and_see_the_alias_in_prompts_ls(page, demo_store):
    url, run_id = demo_store
    best = cli(url, "runs", "show", run_id)["best"]["prompts"]
    component, version = min(best.items())
    page.goto("/prompts")
    page.click(f"tr[data-version='{version}'] a.promote-link")
    page.wait_for_selector("#gate-verdict")
    assert page.locator("#flag-count").count() == 1
    for box in ("#approve", "#force"):  # the gate's and the review's explicit consent
        if page.locator(box).count():
            page.check(box)
    page.click("#confirm-promote")
    page.wait_for_selector("#promoted")
    versions = {(v["component"], v["version"]): v["aliases"] for v in cli(url, "prompts", "ls")}
    assert versions[(component, version)] == ["production"]
    assert "production" in page.locator(f"tr[data-version='{version}'] td.aliases").inner_text()
    assert page.problems == []


def test_a_running_run_page_follows_its_progress_until_it_finishes(page, demo_store):
    from gepa_trace.store import OptimizationRunRow, open_store

    url, run_id = demo_store
    table, store = OptimizationRunRow.__table__, open_store(url)

    def set_status(status: str) -> None:
        with store.write() as conn:
            conn.execute(table.update().where(table.c.id == run_id).values(status=status))

    set_status("running")
    try:
        page.goto(f"/runs/{run_id}")
        assert page.locator("[data-field=status]").inner_text() == "running"
        set_status("finished")  # the polling script sees it and reloads the page
        page.wait_for_function(
            "() => document.querySelector('[data-field=status]').textContent === 'finished'"
            " && !document.querySelector('script[src=\"/static/run.js\"]')")
    finally:
        set_status("finished")
    assert page.locator("#significance").count() == 1
    assert page.problems == []
