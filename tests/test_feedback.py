"""Recording feedback: refusals that name the problem, bulk import that keeps the good
rows and reports the bad ones by line, and the `feedback` commands."""

from __future__ import annotations

import json
import math

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli_traces import run_spans, trace_id_of, write_run

from gepa_trace.cli import main
from gepa_trace.errors import FeedbackError, NotFoundError
from gepa_trace.store import forget_store, open_store
from gepa_trace.store.feedback import (
    UnknownTraceError,
    import_feedback,
    record_feedback,
    register_flush_hook,
)
from gepa_trace.store.queries import feedback_for_traces
from gepa_trace.store.spans import write_spans


def stored_feedback(store) -> list[tuple]:
    with store.read() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT trace_id, score, label, comment, name, source FROM feedback ORDER BY id"))]


def test_recorded_feedback_is_read_back_with_its_trace(store_url):
    store = open_store(store_url)
    trace_id = write_run(store, 1)
    recorded = record_feedback(trace_id.upper(), score=0, comment=" wrong country ",
                               store=store_url)
    assert recorded.trace_id == trace_id and recorded.score == 0.0
    assert recorded.comment == "wrong country" and recorded.name == "user"
    assert feedback_for_traces(store, [trace_id]) == {trace_id: [recorded]}


def test_feedback_on_unknown_trace_is_refused(store_url):
    store = open_store(store_url)
    write_run(store, 1)
    with pytest.raises(FeedbackError, match=f"unknown trace id {'e' * 32}") as info:
        record_feedback("e" * 32, score=1.0, store=store)
    assert isinstance(info.value, NotFoundError) and info.value.exit_code == 3
    assert stored_feedback(store) == []


def test_feedback_on_unknown_span_of_a_known_trace_is_refused(store_url):
    store = open_store(store_url)
    trace_id = write_run(store, 1)
    with pytest.raises(UnknownTraceError, match=f"has no span {'9' * 16}"):
        record_feedback(trace_id, score=1.0, span_id="9" * 16, store=store)
    on_span = record_feedback(trace_id, score=1.0, span_id=f"{1:08x}{4:08x}", store=store)
    assert on_span.span_id == f"{1:08x}{4:08x}"


def test_feedback_right_after_a_run_flushes_buffered_spans_first(store_url):
    """The spans of a run that just ended may still sit in the exporter's queue."""
    store = open_store(store_url)
    pending = run_spans(7)  # what a BatchSpanProcessor holds until its delay passes
    flushes = []

    def flush():
        flushes.append(len(pending))
        write_spans(store, pending)
        pending.clear()

    def broken_flush():
        raise RuntimeError("exporter down")

    unregister = [register_flush_hook(broken_flush), register_flush_hook(flush)]
    try:
        recorded = record_feedback(trace_id_of(7), score=1.0, store=store)
        assert recorded.trace_id == trace_id_of(7) and flushes == [7] and not pending
        record_feedback(trace_id_of(7), score=0.5, store=store)
        assert flushes == [7]  # a stored trace needs no flush
    finally:
        for undo in unregister:
            undo()
    with pytest.raises(UnknownTraceError):
        record_feedback("e" * 32, score=1.0, store=store)
    assert flushes == [7]  # unregistered hooks are not called


@pytest.mark.parametrize("score, problem", [
    (math.nan, "not a finite number"), (math.inf, "not a finite number"),
    (-math.inf, "not a finite number"), ("abc", "not a number"), ("nan", "not a finite"),
    (True, "not a number"), ([1], "not a number")])
def test_non_finite_or_non_number_score_is_refused(sqlite_url, score, problem):
    store = open_store(sqlite_url)
    trace_id = write_run(store, 1)
    with pytest.raises(FeedbackError, match=problem):
        record_feedback(trace_id, score=score, store=store)
    assert stored_feedback(store) == []


@pytest.mark.parametrize("kwargs", [{}, {"label": ""}, {"comment": "   "},
                                    {"score": None, "label": None, "comment": None}])
def test_empty_feedback_is_refused(sqlite_url, kwargs):
    store = open_store(sqlite_url)
    trace_id = write_run(store, 1)
    with pytest.raises(FeedbackError, match="is empty"):
        record_feedback(trace_id, store=store, **kwargs)


@pytest.mark.parametrize("trace_id", ["", "xyz", "a" * 31, "a" * 33, "g" * 32, "0" * 32])
def test_malformed_trace_id_is_refused_before_the_store_is_opened(trace_id):
    # No store argument and none configured would open ./gepa_trace.db: the refusal
    # comes first, so no file is created.
    with pytest.raises(FeedbackError, match="trace_id|malformed"):
        record_feedback(trace_id, score=1.0, store="sqlite:////no/such/dir/x.db")


def test_overlong_label_is_refused_on_every_database(sqlite_url):
    store = open_store(sqlite_url)
    trace_id = write_run(store, 1)
    with pytest.raises(FeedbackError, match="label is 300 characters long"):
        record_feedback(trace_id, label="x" * 300, store=store)


def test_record_feedback_defaults_to_the_configured_store(sqlite_url, monkeypatch):
    store = open_store(sqlite_url)
    trace_id = write_run(store, 1)
    monkeypatch.setenv("GEPA_TRACE_STORE", sqlite_url)
    import gepa_trace as gt

    gt.record_feedback(trace_id, label="thumbs-up")
    assert stored_feedback(store) == [(trace_id, None, "thumbs-up", None, "user", "user")]


# ---------------------------------------------------------------- import


def test_import_keeps_good_rows_and_reports_bad_ones_by_line(store_url, tmp_path):
    store = open_store(store_url)
    a, b = write_run(store, 1), write_run(store, 2)
    earlier = record_feedback(a, score=0.5, store=store)
    path = tmp_path / "ratings.csv"
    path.write_text(
        "trace_id,score,label,comment,name,source\n"          # line 1
        f"{a},1,good,,judge,llm-judge\n"                        # 2 good
        f"{a},nan,,,,\n"                                        # 3 non-finite
        f"{'e' * 32},0,,,,\n"                                   # 4 unknown trace
        f"{b},,,\"two\nlines\",,\n"                             # 5-6 good, multi-line
        "not-a-trace,1,,,,\n"                                   # 7 malformed
        f"{b},,,,,\n"                                           # 8 empty
        "\n"                                                    # 9 blank: skipped
        f"{b.upper()},0.25,,,,\n")                              # 10 good
    report = import_feedback(store_url, path)
    assert report.format == "csv" and report.accepted == 3
    assert [(r.line, r.reason.split(" (")[0]) for r in report.rejected] == [
        (3, "score 'nan' is not a finite number"),
        (4, f"unknown trace id {'e' * 32}"),
        (7, "trace id 'not-a-trace' is malformed"),
        (8, f"feedback on trace {b} is empty"),
    ]
    assert stored_feedback(store) == [
        (a, 0.5, None, None, "user", "user"),
        (a, 1.0, "good", None, "judge", "automated"),
        (b, None, None, "two\nlines", "user", "user"),
        (b, 0.25, None, None, "user", "user"),
    ]
    assert feedback_for_traces(store, [a])[a][0] == earlier


def test_import_jsonl_reports_invalid_lines(store_url, tmp_path):
    store = open_store(store_url)
    a = write_run(store, 1)
    path = tmp_path / "judged.jsonl"
    path.write_text("\n".join([
        json.dumps({"trace_id": a, "score": 0.0, "comment": "wrong country"}),
        "{not json",
        json.dumps([a, 1]),
        json.dumps({"score": 1}),
        json.dumps({"trace_id": a, "score": "Infinity"}),
        "",
        json.dumps({"trace_id": a, "label": "ok", "extra": "ignored"}),
    ]) + "\n")
    report = import_feedback(store, path)
    assert report.accepted == 2
    assert [r.line for r in report.rejected] == [2, 3, 4, 5]
    assert "not valid JSON" in report.rejected[0].reason
    assert "expected a JSON object" in report.rejected[1].reason
    assert "no trace_id" in report.rejected[2].reason
    assert [row[2] for row in stored_feedback(store)] == [None, "ok"]


def test_import_without_trace_id_column_or_file_is_refused(sqlite_url, tmp_path):
    store = open_store(sqlite_url)
    path = tmp_path / "x.csv"
    path.write_text("id,score\n1,2\n")
    with pytest.raises(FeedbackError, match="no trace_id column"):
        import_feedback(store, path)
    with pytest.raises(FeedbackError, match="cannot read feedback file"):
        import_feedback(store, tmp_path / "missing.csv")


def test_import_sniffs_jsonl_without_extension(sqlite_url, tmp_path):
    store = open_store(sqlite_url)
    a = write_run(store, 1)
    path = tmp_path / "feedback.txt"
    path.write_text(json.dumps({"trace_id": a, "score": 1}) + "\n")
    assert import_feedback(store, path).format == "jsonl"


# ---------------------------------------------------------------- CLI


def test_feedback_add_records_and_reads_back_in_traces(store_url):
    store = open_store(store_url)
    trace_id = write_run(store, 1)
    runner = CliRunner()
    result = runner.invoke(main, ["feedback", "add", trace_id, "--score", "0", "--comment",
                                  "wrong country", "--store", store_url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["comment"] == "wrong country"
    listed = runner.invoke(main, ["traces", "--json", "--store", store_url])
    assert json.loads(listed.stdout)[0]["feedback"][0]["score"] == 0.0


@pytest.mark.parametrize("args, code, message", [
    (["e" * 32, "--score", "1"], 3, "unknown trace id"),
    ([trace_id_of(1), "--score", "nan"], 1, "not a finite number"),
    ([trace_id_of(1)], 1, "is empty"),
    (["bad-id", "--score", "1"], 1, "malformed"),
])
def test_feedback_add_refusals_are_one_line(sqlite_url, args, code, message):
    write_run(open_store(sqlite_url), 1)
    result = CliRunner().invoke(main, ["feedback", "add", *args, "--store", sqlite_url])
    assert result.exit_code == code, result.output
    assert message in result.stderr and result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.output


def test_feedback_import_exits_1_and_lists_bad_rows_on_stderr(store_url, tmp_path):
    store = open_store(store_url)
    a = write_run(store, 1)
    path = tmp_path / "ratings.csv"
    path.write_text(f"trace_id,score\n{a},1\n{a},abc\n{'e' * 32},0\n")
    result = CliRunner().invoke(main, ["feedback", "import", str(path), "--store", store_url])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "line 3: score 'abc' is not a number" in result.stderr
    assert f"line 4: unknown trace id {'e' * 32}" in result.stderr
    assert "imported 1 feedback row(s)" in result.stderr
    assert len(stored_feedback(store)) == 1


def test_feedback_import_of_a_clean_file_exits_0_with_json_report(sqlite_url, tmp_path):
    store = open_store(sqlite_url)
    a = write_run(store, 1)
    path = tmp_path / "ratings.jsonl"
    path.write_text(json.dumps({"trace_id": a, "score": 1}) + "\n")
    result = CliRunner().invoke(main, ["feedback", "import", str(path), "--json",
                                       "--store", sqlite_url])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"path": str(path), "format": "jsonl",
                                         "accepted": 1, "duplicates": 0, "replaced": 0,
                                         "superseded": 0,
                                         "rejected": [], "ok": True}
    forget_store(sqlite_url)


def test_feedback_right_after_an_instrumented_run_finds_its_spans(store_url):
    """The public flow of DESIGN.md: run under agent_run, then record feedback at once,
    while the run's spans still wait in the BatchSpanProcessor (1 s delay by default)."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.prompts import ChatPromptTemplate

    import gepa_trace as gt
    from gepa_trace.store.queries import get_trace, list_runs

    prompt = gt.component("planner", ChatPromptTemplate.from_messages(
        [("system", "Plan the answer."), ("human", "{question}")]))
    chain = prompt | GenericFakeChatModel(messages=iter([AIMessage(content="Lima")]))
    inst = gt.instrument(store=store_url, service_name="support-agent")
    try:
        with gt.agent_run("support-agent", inputs="capital of peru?") as run:
            run.set_outputs(chain.invoke({"question": "capital of peru?"}).content)
        recorded = gt.record_feedback(run.trace_id, score=0.0, comment="say the country too",
                                      store=store_url)
    finally:
        inst.shutdown()
    assert recorded.trace_id == run.trace_id
    [listed] = list_runs(store_url, agent="support-agent")
    assert listed.trace_id == run.trace_id and listed.score == 0.0
    trace = get_trace(store_url, run.trace_id)
    assert trace.spans[0].depth == 0 and trace.spans[0].span_type == "agent"
    assert any(s.span_type == "llm" and s.component == "planner" for s in trace.spans)


ROW_KINDS = ["good", "good_multiline", "nan", "word", "unknown", "malformed", "empty"]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(ROW_KINDS), max_size=12))
def test_import_accepts_exactly_the_good_rows_and_names_every_bad_line(sqlite_url, tmp_path,
                                                                      kinds):
    store = open_store(sqlite_url)
    known = write_run(store, 1)
    before = len(stored_feedback(store))
    cells = {
        "good": f"{known},0.5,ok,fine", "good_multiline": f'{known},,,"line one\nline two"',
        "nan": f"{known},nan,,", "word": f"{known},high,,", "unknown": f"{'e' * 32},1,,",
        "malformed": "xyz,1,,", "empty": f"{known},,,",
    }
    lines, bad_lines, line = ["trace_id,score,label,comment"], [], 2
    for kind in kinds:
        lines.append(cells[kind])
        if not kind.startswith("good"):
            bad_lines.append(line)
        line += cells[kind].count("\n") + 1
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join(lines) + "\n")
    report = import_feedback(store, path)
    good = sum(k.startswith("good") for k in kinds)
    # Each good row is stored once per store: repeated (in this file or an earlier
    # example's) it is a duplicate, not a new record and not a rejection.
    assert report.accepted + report.duplicates == good
    assert [r.line for r in report.rejected] == bad_lines
    assert len(stored_feedback(store)) == before + report.accepted
    assert before + report.accepted <= 2
