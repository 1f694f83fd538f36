"""The UI's traces list (filters, paging) and trace page (messages, tool calls, feedback
form), on a small store with hostile text in it."""

from __future__ import annotations

import re

import pytest
from ui_store import AGENT, VERSION, build, client, run_spans

from gepa_trace.store import open_store
from gepa_trace.store.queries import get_trace
from gepa_trace.store.run_search import RunFilter, agents_with_runs, search_runs
from gepa_trace.store.spans import write_spans


@pytest.fixture
def store(sqlite_url):
    return sqlite_url, build(sqlite_url)


@pytest.fixture
def ui(store):
    return client(store[0])


def listed(page: str) -> list[str]:
    return re.findall(r'href="/traces/([0-9a-f]{32})"', page)


def test_hostile_text_in_a_trace_is_shown_escaped_never_as_markup(store, ui):
    _, ids = store
    for path in ("/traces", f"/traces/{ids['hostile']}"):
        page = ui.get(path).text
        assert "<script>alert" not in page
        assert "&lt;script&gt;alert(" in page
    for path in (f"/traces/{ids['good']}", "/components", "/prompts"):
        page = ui.get(path).text
        assert "<b>Never</b>" not in page and "&lt;b&gt;Never&lt;/b&gt;" in page, path


def test_trace_page_shows_messages_tool_calls_tokens_and_feedback(store, ui):
    _, ids = store
    page = ui.get(f"/traces/{ids['good']}").text
    assert "Answer briefly." in page and "Capital of Peru?" in page  # input messages
    assert 'class="msg role-assistant out"' in page and "Lima" in page  # output message
    assert "tool search input" in page and "a passage" in page
    assert f"answerer@{VERSION[:12]}" in page and "20/5" in page
    assert 'id="feedback-table"' in page


def test_filters_pick_negative_feedback_errors_text_and_version(store, ui):
    _, ids = store
    assert listed(ui.get("/traces?feedback=negative").text) == [ids["hostile"]]
    assert listed(ui.get("/traces?feedback=positive").text) == [ids["good"]]
    assert listed(ui.get("/traces?errors=1").text) == [ids["hostile"]]
    assert listed(ui.get("/traces?q=peru").text) == [ids["good"]]
    assert listed(ui.get("/traces?q=100%25").text) == []  # % is a character, not a wildcard
    assert sorted(listed(ui.get(f"/traces?version={VERSION[:8]}").text)) == sorted(ids.values())
    assert listed(ui.get("/traces?version=ffffffff").text) == []
    assert sorted(listed(ui.get(f"/traces?agent={AGENT}").text)) == sorted(ids.values())
    assert ui.get("/traces?since=yesterday-ish").status_code == 400


def test_reviewer_feedback_with_a_correction_is_recorded_and_filterable(store, ui):
    _, ids = store
    page = ui.get(f"/traces/{ids['good']}").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    answer = ui.post(f"/traces/{ids['good']}/feedback",
                     data={"score": "0", "label": "wrong", "expected": "Lima, Peru",
                           "comment": "name the country", "csrf": csrf})
    assert answer.status_code == 200 and "Recorded feedback" in answer.text
    record = get_trace(store[0], ids["good"]).feedback[-1]
    assert (record.source, record.expected, record.label, record.score) == (
        "reviewer", "Lima, Peru", "wrong", 0.0)
    assert listed(ui.get("/traces?corrected=1").text) == [ids["good"]]


def test_bad_feedback_is_refused_with_its_reason_and_nothing_stored(store, ui):
    _, ids = store
    page = ui.get(f"/traces/{ids['good']}").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    before = len(get_trace(store[0], ids["good"]).feedback)
    answer = ui.post(f"/traces/{ids['good']}/feedback", data={"score": "7", "csrf": csrf})
    assert answer.status_code == 400 and "score" in answer.text
    assert ui.post(f"/traces/{ids['good']}/feedback",
                   data={"score": "abc", "csrf": csrf}).status_code == 400
    assert len(get_trace(store[0], ids["good"]).feedback) == before
    assert ui.get("/traces/0123456789abcdef0123456789abcdef").status_code == 404


def test_keyset_paging_over_all_agents_visits_every_run_once_newest_first(store_url):
    store = open_store(store_url)
    for n in range(10, 24):
        spans = run_spans(n, f"q{n}", f"a{n}")
        root = spans[0]["attributes"]
        if n % 3 == 1:
            root["gepa.agent"] = "other-agent"
        elif n % 3 == 2:
            del root["gepa.agent"]  # a root that names no agent is listed too
            root["openinference.span.kind"] = "CHAIN"
            spans[0]["name"] = "job"
            for span in spans:
                span["resource"] = {}
        write_spans(store, spans)
    seen, after = [], None
    while True:
        page = search_runs(store, RunFilter(), after=after, limit=4)
        seen += [(r.start_ns, r.trace_id) for r in page.runs]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    assert len(seen) == len(set(seen)) == 14
    assert seen == sorted(seen, key=lambda k: (-k[0], k[1]))
    assert agents_with_runs(store) == sorted({AGENT, "other-agent"})
    assert sum(r.agent is None for r in search_runs(store, limit=50).runs) == 5
    assert len(search_runs(store, RunFilter(agent="other-agent"), limit=50).runs) == 5


def test_text_search_reads_a_bounded_window_and_continues_with_older_runs(sqlite_url,
                                                                          monkeypatch):
    from gepa_trace.store import run_search

    store = open_store(sqlite_url)
    for n in range(30, 42):  # every third run mentions a zebra
        write_spans(store, run_spans(n, f"q{n}" + (" zebra" if n % 3 == 0 else ""), "a"))
    monkeypatch.setattr(run_search, "TEXT_WINDOW", 4)
    found, after, pages = [], None, 0
    while True:
        page = search_runs(store, RunFilter(text="ZEBRA"), after=after, limit=10)
        pages += 1
        found += [r.trace_id for r in page.runs]
        if page.next_cursor is None:
            break
        assert page.searched_to is not None  # each stop is said
        after = page.next_cursor
    assert sorted(found) == sorted({f"{n:08x}aa11bb22cc33dd44ee55ff66"
                                    for n in range(30, 42) if n % 3 == 0})
    assert len(found) == len(set(found)) and pages >= 3
    ui = client(sqlite_url)
    assert "search older runs" in ui.get("/traces?q=zebra").text
