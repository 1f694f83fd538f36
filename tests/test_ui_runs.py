"""Runs in the UI: the list, a run's page with the report's sections (one report
design), and the progress a running run's page polls."""

from __future__ import annotations

import pytest
from test_report import run_engine
from ui_store import client

from gepa_trace.report.html import SECTIONS
from gepa_trace.store import OptimizationRunRow, open_store


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('ui-runs') / 'store.db'}"
    run_id, _ = run_engine(url)
    return url, run_id



def test_runs_list_links_each_run(engine_run):
    url, run_id = engine_run
    page = client(url).get("/runs").text
    assert f'href="/runs/{run_id}"' in page and "finished" in page


def test_run_page_has_every_section_of_the_report(engine_run):
    url, run_id = engine_run
    page = client(url).get(f"/runs/{run_id}")
    assert page.status_code == 200
    for anchor, _title in SECTIONS:
        assert f'<section id="{anchor}">' in page.text, anchor
    assert "<table class=\"diff\"" in page.text  # the seed -> best diff
    assert "/static/run.js" not in page.text  # finished: nothing to poll


def test_a_running_run_shows_its_progress_and_polls_it(engine_run):
    url, run_id = engine_run
    table = OptimizationRunRow.__table__
    store = open_store(url)
    with store.write() as conn:
        conn.execute(table.update().where(table.c.id == run_id).values(status="running"))
    try:
        ui = client(url)
        page = ui.get(f"/runs/{run_id}").text
        assert '<script src="/static/run.js"></script>' in page
        assert ui.get("/static/run.js").status_code == 200
        progress = ui.get(f"/runs/{run_id}/progress.json").json()
        assert progress["status"] == "running" and progress["rollouts"] > 0
        assert progress["iterations"] > 0 and progress["best_val_score"] is not None
    finally:
        with store.write() as conn:
            conn.execute(table.update().where(table.c.id == run_id).values(status="finished"))


def test_unknown_run_is_404(engine_run):
    url, _ = engine_run
    assert client(url).get("/runs/run-nope").status_code == 404
    assert client(url).get("/runs/run-nope/progress.json").status_code == 404
