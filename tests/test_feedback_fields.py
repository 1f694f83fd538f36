"""Feedback fields end to end (issue 17): a declared score range, the source vocabulary,
corrections, idempotency (a duplicate import or an HTTP retry stores nothing), --replace,
gepa.feedback span events, and the migration of a store written before these fields."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from rewind import forget_revisions_from
from test_cli_traces import trace_id_of, write_run
from test_collector_http import make_request, post

from gepa_trace.cli import main
from gepa_trace.collectors.exporter import SqlSpanExporter
from gepa_trace.collectors.otlp import Collector, CollectorConfig, ingest_files
from gepa_trace.errors import FeedbackError
from gepa_trace.store import forget_store, open_store
from gepa_trace.store.feedback import FeedbackConflict, import_feedback, record_feedback
from gepa_trace.store.queries import feedback_for_traces
from gepa_trace.store.spans import skipped_feedback_events
from gepa_trace.store.verdict import verdict

OUT_OF_RANGE = "score 5 is outside its range 0..1; declare the range with --score-range"
ROOT = f"{1:08x}{1:08x}"   # the root span of run 1 (test_cli_traces.run_spans)
CHILD = f"{1:08x}{4:08x}"


def rows(store, columns="trace_id, span_id, name, score, score_low, score_high, label, "
                        "comment, expected, expected_field, source, replaced_by"):
    with store.read() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(
            f"SELECT id, {columns} FROM feedback ORDER BY id"))]


# ---------------------------------------------------------------- the fields


def test_a_declared_range_bounds_the_score_and_scales_it_for_the_verdict(store_url):
    store = open_store(store_url)
    a = write_run(store, 1)
    stars = record_feedback(a, score=4, score_range=(1, 5), store=store)
    assert (stars.score, stars.score_low, stars.score_high) == (4.0, 1.0, 5.0)
    assert verdict([stars]).score == 0.75
    for spelled in ("1,5", "1-5", "1..5", [1, 5]):
        assert record_feedback(a, score=5, score_range=spelled, name=str(spelled),
                               store=store).score_high == 5.0


@pytest.mark.parametrize("kwargs, message", [
    ({"score": 5}, OUT_OF_RANGE),
    ({"score": -3}, "score -3 is outside its range 0..1"),
    ({"score": 6, "score_range": (1, 5)}, "score 6 is outside its range 1..5"),
    ({"score": 1, "score_range": (5, 1)}, "score range 5..1 is empty"),
    ({"score": 1, "score_range": (1, 1)}, "score range 1..1 is empty"),
    ({"score": 1, "score_range": "five"}, "is not 'low,high'"),
    ({"score": 1, "source": "llm"}, "source 'llm' is not one of user, reviewer, automated"),
    ({"expected_field": "country", "comment": "x"},
     "expected_field 'country' is given without expected"),
    ({"label": "ok", "feedback_id": "k" * 121}, "feedback_id is 121 characters long"),
])
def test_invalid_fields_are_refused_with_the_reason(sqlite_url, kwargs, message):
    store = open_store(sqlite_url)
    a = write_run(store, 1)
    with pytest.raises(FeedbackError, match=message.replace("(", r"\(").replace(".", r"\.")):
        record_feedback(a, store=store, **kwargs)
    assert rows(store) == []


def test_source_aliases_are_stored_as_the_canonical_source(sqlite_url):
    store = open_store(sqlite_url)
    a = write_run(store, 1)
    assert record_feedback(a, score=1, source="human", store=store).source == "user"
    assert record_feedback(a, score=1, source="LLM-Judge", store=store).source == "automated"
    assert record_feedback(a, score=1, source="reviewer", store=store).source == "reviewer"


def test_a_correction_alone_is_feedback_and_names_its_field(sqlite_url):
    store = open_store(sqlite_url)
    a = write_run(store, 1)
    fb = record_feedback(a, expected="Peru", expected_field="country", source="reviewer",
                         store=store)
    assert (fb.expected, fb.expected_field, fb.score) == ("Peru", "country", None)
    assert verdict([fb]).expected == "Peru"


# ---------------------------------------------------------------- idempotency


def test_the_same_record_twice_is_stored_once_and_says_so(store_url):
    store = open_store(store_url)
    a = write_run(store, 1)
    first = record_feedback(a, score=0, comment="wrong country", store=store)
    again = record_feedback(a, score=0.0, comment=" wrong country ", store=store)
    assert not first.duplicate and again.duplicate and again.id == first.id
    assert len(rows(store)) == 1
    # a different score (or name, source, span...) is another record
    assert not record_feedback(a, score=1, comment="wrong country", store=store).duplicate
    assert len(rows(store)) == 2


def test_the_same_record_sent_at_once_by_several_clients_is_one_record(store_url):
    """Concurrent retries race on the unique key (PostgreSQL); the loser sees the
    winner's record and reports a duplicate instead of failing."""
    from concurrent.futures import ThreadPoolExecutor

    store = open_store(store_url)
    a = write_run(store, 1)
    start = threading.Barrier(8)

    def send(_):
        start.wait()
        return record_feedback(a, score=1, feedback_id="r", store=store)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(8)))
    assert len({r.id for r in results}) == 1 and len(rows(store)) == 1
    assert sum(not r.duplicate for r in results) == 1


def test_a_feedback_id_is_idempotent_and_refuses_other_content_without_replace(store_url):
    store = open_store(store_url)
    a = write_run(store, 1)
    first = record_feedback(a, score=1, feedback_id="ticket-7", store=store)
    assert first.feedback_id == "ticket-7"
    assert record_feedback(a, score=1, feedback_id="ticket-7", store=store).duplicate
    with pytest.raises(FeedbackConflict, match="feedback_id 'ticket-7' is already recorded "
                                               "with other content; pass --replace"):
        record_feedback(a, score=0, feedback_id="ticket-7", store=store)
    assert [r["score"] for r in rows(store)] == [1.0]


def test_a_callers_key_never_collides_with_a_content_hash(sqlite_url):
    store = open_store(sqlite_url)
    a = write_run(store, 1)
    hashed = record_feedback(a, score=1, store=store)
    assert hashed.feedback_key.startswith("sha256:")
    named = record_feedback(a, score=0, feedback_id=hashed.feedback_key, store=store)
    assert not named.duplicate and named.feedback_key == "id:" + hashed.feedback_key


def test_importing_the_same_file_twice_stores_it_once(store_url, tmp_path):
    store = open_store(store_url)
    a, b = write_run(store, 1), write_run(store, 2)
    csv = tmp_path / "ratings.csv"
    csv.write_text("trace_id,score,score_low,score_high,expected,expected_field,source,"
                   "feedback_id,comment\n"
                   f"{a},4,1,5,Peru,country,reviewer,,\n"
                   f"{b},,,,,,user,t-2,too long\n"
                   f"{a},4,1,5,Peru,country,reviewer,,\n")  # repeated in the file: one record
    first = import_feedback(store, csv)
    assert (first.accepted, first.duplicates, first.rejected) == (2, 1, [])
    second = import_feedback(store, csv)
    assert (second.accepted, second.duplicates, second.rejected) == (0, 3, [])
    assert len(rows(store)) == 2
    result = CliRunner().invoke(main, ["feedback", "import", str(csv), "--store", store_url])
    assert result.exit_code == 0, result.output
    assert "imported 0 feedback row(s)" in result.stderr and "3 already recorded" in result.stderr
    jsonl = tmp_path / "ratings.jsonl"
    jsonl.write_text(json.dumps({"trace_id": a, "score": 4, "score_range": [1, 5],
                                 "expected": "Peru", "expected_field": "country",
                                 "source": "reviewer"}) + "\n")
    # the same record as the CSV's first row, spelled in JSONL: already recorded
    assert import_feedback(store, jsonl).duplicates == 1 and len(rows(store)) == 2
    [stored] = [r for r in rows(store) if r["trace_id"] == a]
    assert (stored["score_low"], stored["score_high"], stored["expected_field"]) == (
        1.0, 5.0, "country")


def test_import_reports_out_of_range_rows_and_conflicting_ids_by_line(sqlite_url, tmp_path):
    store = open_store(sqlite_url)
    a = write_run(store, 1)
    record_feedback(a, score=1, feedback_id="k1", store=store)
    path = tmp_path / "f.csv"
    path.write_text(f"trace_id,score,feedback_id\n{a},5,\n{a},0,k1\n{a},0.5,k2\n")
    report = import_feedback(store, path)
    assert report.accepted == 1
    assert [(r.line, r.reason[:55]) for r in report.rejected] == [
        (2, OUT_OF_RANGE[:55]),
        (3, "feedback_id 'k1' is already recorded with other content")]
    result = CliRunner().invoke(main, ["feedback", "import", str(path), "--store", sqlite_url])
    assert result.exit_code == 1 and f"line 2: {OUT_OF_RANGE}" in result.stderr


# ---------------------------------------------------------------- replacement


def test_records_accumulate_unless_replace_is_asked(store_url):
    store = open_store(store_url)
    a = write_run(store, 1)
    up = record_feedback(a, score=1, store=store)
    down = record_feedback(a, score=0, store=store)
    other_source = record_feedback(a, score=1, source="reviewer", store=store)
    on_span = record_feedback(a, score=1, span_id=CHILD, store=store)
    records = feedback_for_traces(store, [a])[a]
    # the mean of the run's three records, a reviewer's counting twice (store.verdict)
    assert verdict(records).score == 0.75

    new = record_feedback(a, score=0.5, comment="meh", replace=True, store=store)
    # the user's records on the run (same trace, span, name, source) are replaced, kept
    assert new.replaced == (up.id, down.id)
    by_id = {r["id"]: r for r in rows(store)}
    assert by_id[up.id]["replaced_by"] == new.id == by_id[down.id]["replaced_by"]
    assert by_id[other_source.id]["replaced_by"] is None
    assert by_id[on_span.id]["replaced_by"] is None
    assert verdict(feedback_for_traces(store, [a])[a]).score == pytest.approx(2.5 / 3)

    # re-sending a replaced record (an old retry) does not bring it back
    assert record_feedback(a, score=1, store=store).duplicate
    assert by_id[up.id]["replaced_by"] == rows(store)[0]["replaced_by"]
    # replacing with exactly what is in effect stores nothing
    assert record_feedback(a, score=0.5, comment="meh", replace=True, store=store).duplicate


def test_replace_with_a_feedback_id_replaces_that_record_only(store_url):
    store = open_store(store_url)
    a = write_run(store, 1)
    plain = record_feedback(a, score=1, store=store)
    keyed = record_feedback(a, score=0, feedback_id="k", store=store)
    new = record_feedback(a, score=0.25, feedback_id="k", replace=True, store=store)
    assert new.replaced == (keyed.id,) and new.feedback_id == "k"
    assert {r["id"]: r["replaced_by"] for r in rows(store)} == {
        plain.id: None, keyed.id: new.id, new.id: None}
    # replaced again: the key moves on to the newest record, the earlier ones stay kept
    newest = record_feedback(a, score=0.75, feedback_id="k", replace=True, store=store)
    assert newest.replaced == (new.id,)
    assert record_feedback(a, score=0.75, feedback_id="k", store=store).id == newest.id


def test_import_with_replace_lets_each_row_replace_the_earlier(sqlite_url, tmp_path):
    store = open_store(sqlite_url)
    a = write_run(store, 1)
    first = record_feedback(a, score=1, store=store)
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"trace_id": a, "score": 0, "comment": "wrong"}) + "\n")
    report = import_feedback(store, path, replace=True)
    assert (report.accepted, report.replaced) == (1, 1)
    assert [r["replaced_by"] is None for r in rows(store)] == [False, True]
    assert rows(store)[0]["id"] == first.id


def test_with_replace_the_last_row_of_a_file_is_the_one_in_effect(store_url, tmp_path):
    store = open_store(store_url)
    a = write_run(store, 1)
    first = record_feedback(a, score=0.5, store=store)
    path = tmp_path / "f.csv"
    path.write_text(f"trace_id,score\n{a},1\n{a},0\n{a},1\n")  # up, down, up again
    report = import_feedback(store, path, replace=True)
    assert (report.accepted, report.superseded, report.replaced) == (1, 2, 1)
    records = feedback_for_traces(store, [a])[a]
    assert [(f.score, f.replaced_by) for f in records] == [(0.5, first.id + 1), (1.0, None)]
    again = import_feedback(store, path, replace=True)  # stores nothing
    assert (again.accepted, again.duplicates, again.replaced) == (0, 1, 0)
    assert feedback_for_traces(store, [a])[a] == records
    # an up, down, up again sent one by one is three records, the last in effect
    for score in (0, 1):
        record_feedback(a, score=score, replace=True, store=store)
    assert [f.score for f in feedback_for_traces(store, [a])[a]
            if f.replaced_by is None] == [1.0]


def test_feedback_add_cli_fields_duplicates_and_replace(sqlite_url):
    store = open_store(sqlite_url)
    a = write_run(store, 1)
    runner = CliRunner()
    base = ["feedback", "add", a, "--store", sqlite_url]
    added = runner.invoke(main, [*base, "--score", "4", "--score-range", "1,5", "--expected",
                                 "Peru", "--expected-field", "country", "--source",
                                 "reviewer", "--feedback-id", "KEY", "--json"])
    assert added.exit_code == 0, added.output
    data = json.loads(added.stdout)
    assert (data["score_low"], data["score_high"], data["expected"], data["source"],
            data["feedback_key"], data["duplicate"]) == (1.0, 5.0, "Peru", "reviewer",
                                                         "id:KEY", False)
    again = runner.invoke(main, [*base, "--score", "4", "--score-range", "1,5", "--expected",
                                 "Peru", "--expected-field", "country", "--source",
                                 "reviewer", "--feedback-id", "KEY"])
    assert again.exit_code == 0
    assert f"already recorded (feedback {data['id']})" in again.stderr
    other = runner.invoke(main, [*base, "--score", "2", "--score-range", "1,5",
                                 "--feedback-id", "KEY"])
    assert other.exit_code == 1 and other.stderr.count("\n") == 1
    assert "pass --replace to replace it" in other.stderr
    replaced = runner.invoke(main, [*base, "--score", "2", "--score-range", "1,5",
                                    "--feedback-id", "KEY", "--replace"])
    assert replaced.exit_code == 0
    assert f"replaces feedback {data['id']}" in replaced.stderr
    out = runner.invoke(main, [*base, "--score", "5"])
    assert out.exit_code == 1 and f"Error: {OUT_OF_RANGE}" in out.stderr
    assert "Traceback" not in out.output


def test_traces_show_prints_the_new_fields_of_each_record(sqlite_url):
    store = open_store(sqlite_url)
    a = write_run(store, 1)
    old = record_feedback(a, score=2, score_range=(1, 5), source="reviewer", store=store)
    record_feedback(a, score=5, score_range=(1, 5), source="reviewer", replace=True,
                    expected="Peru", expected_field="country", comment="it is Peru",
                    store=store)
    runner = CliRunner()
    text = runner.invoke(main, ["traces", "show", a, "--store", sqlite_url]).stdout
    feedback = text.split("feedback:")[1]
    assert "score=2 (1..5)" in feedback and "(reviewer, " in feedback
    assert f"[replaced by #{old.id + 1}; not used]" in feedback
    assert "expected (field country): Peru" in feedback and "it is Peru" in feedback
    listed = runner.invoke(main, ["traces", "--store", sqlite_url]).stdout
    assert " 1 (1) " in listed  # 5 on 1..5; the replaced record does not count
    shown = json.loads(runner.invoke(main, ["traces", "show", a, "--json",
                                            "--store", sqlite_url]).stdout)
    assert [(f["expected"], f["source"], f["score_high"], f["replaced_by"])
            for f in shown["feedback"]] == [(None, "reviewer", 5.0, old.id + 1),
                                            ("Peru", "reviewer", 5.0, None)]


# ---------------------------------------------------------------- HTTP


@pytest.fixture
def collector(store_url):
    c = Collector(open_store(store_url), CollectorConfig(http_port=0, grpc_port=None)).start()
    yield c
    c.stop(grace=5)


def post_feedback(collector, fields):
    response, data = post(collector.http_port, json.dumps(fields).encode(),
                          ctype="application/json", path="/v1/feedback")
    return response.status, json.loads(data)


def test_an_http_retry_of_the_same_feedback_is_one_record(collector):
    post(collector.http_port, make_request(1).SerializeToString())
    trace_id = (1).to_bytes(16, "big").hex()
    fields = {"trace_id": trace_id, "score": 4, "score_range": [1, 5], "expected": "Lima",
              "expected_field": "city", "source": "reviewer", "feedback_id": "req-1"}
    status, first = post_feedback(collector, fields)
    assert status == 200 and first["duplicate"] is False, first
    status, retry = post_feedback(collector, fields)
    assert status == 200 and retry["duplicate"] is True
    assert retry["feedback"]["id"] == first["feedback"]["id"]
    assert len(rows(collector.store)) == 1
    status, body = post_feedback(collector, {**fields, "score": 2})
    assert status == 409 and "pass --replace" in body["error"]
    status, body = post_feedback(collector, {**fields, "score": 2, "replace": True})
    assert status == 200 and body["replaced"] == [first["feedback"]["id"]]
    status, body = post_feedback(collector, {"trace_id": trace_id, "score": 5})
    assert status == 400 and body["error"].startswith(OUT_OF_RANGE)


# ---------------------------------------------------------------- span events


def _kv(key, value):
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def feedback_event(**fields) -> Span.Event:
    return Span.Event(name="gepa.feedback", time_unix_nano=1_700_000_000_000_000_000,
                      attributes=[_kv(f"gepa.feedback.{k}", v) for k, v in fields.items()])


def test_span_events_sent_to_the_collector_become_feedback_once(collector, caplog):
    request = make_request(2)
    root, child = request.resource_spans[0].scope_spans[0].spans
    child.trace_id = root.trace_id
    child.parent_span_id = root.span_id
    root.events.append(feedback_event(score=4.0, score_low=1.0, score_high=5.0,
                                      source="reviewer", expected="Lima",
                                      expected_field="city", label="close"))
    child.events.append(feedback_event(score=0.0, comment="the tool call was wrong"))
    child.events.append(feedback_event(score=9.0, comment="SECRET user text"))  # out of range
    child.events.append(Span.Event(name="note"))
    before = skipped_feedback_events()["malformed"]
    with caplog.at_level(logging.WARNING):
        response, _ = post(collector.http_port, request.SerializeToString())
        assert response.status == 200
        assert post(collector.http_port, request.SerializeToString())[0].status == 200  # retry
    stored = rows(collector.store)
    trace_id = root.trace_id.hex()
    assert [(r["trace_id"], r["span_id"], r["score"], r["source"]) for r in stored] == [
        (trace_id, None, 4.0, "reviewer"), (trace_id, child.span_id.hex(), 0.0, "user")]
    assert (stored[0]["expected"], stored[0]["expected_field"], stored[0]["score_high"]) == (
        "Lima", "city", 5.0)
    with collector.store.read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM spans")).scalar() == 2
    assert skipped_feedback_events()["malformed"] == before + 2  # once per sending
    assert "SECRET" not in caplog.text


def test_span_events_from_the_in_process_exporter_and_ingest_become_feedback(store_url,
                                                                             tmp_path):
    store = open_store(store_url)
    exporter = SqlSpanExporter(store)
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("agent", attributes={"gepa.agent": "svc"}) as root:
        root.add_event("gepa.feedback", {"gepa.feedback.score": 1.0,
                                         "gepa.feedback.comment": "right",
                                         "gepa.feedback.id": "run-1"})
        trace_id = f"{root.get_span_context().trace_id:032x}"
    provider.shutdown()
    [fb] = feedback_for_traces(store, [trace_id])[trace_id]
    assert (fb.span_id, fb.score, fb.comment, fb.feedback_key) == (None, 1.0, "right",
                                                                   "id:run-1")
    # the same events loaded from a file: stored once, on the trace named in the file
    request = make_request(1, seed=3)
    request.resource_spans[0].scope_spans[0].spans[0].events.append(
        feedback_event(score=0.0, name="correctness"))
    path = tmp_path / "spans.pb"
    path.write_bytes(request.SerializeToString())
    ingest_files(store, [path, path])
    ingested = request.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    assert [(f.name, f.score) for f in feedback_for_traces(store, [ingested])[ingested]] == [
        ("correctness", 0.0)]


# ---------------------------------------------------------------- migration


def test_a_store_from_before_the_feedback_fields_is_migrated(store_url, tmp_path):
    """A store written by 0001 (rebuilt here by undoing 0002) opens with the new
    columns, 'human' becomes 'user', and its records get their content key, so the file
    imported before the upgrade imports as duplicates."""
    store = open_store(store_url)
    a = write_run(store, 1)
    with store.write() as conn:
        conn.execute(sa.text("DROP INDEX ux_feedback_key"))
        for column in ("expected", "expected_field", "score_low", "score_high",
                       "feedback_key", "replaced_by"):
            conn.execute(sa.text(f"ALTER TABLE feedback DROP COLUMN {column}"))
        conn.execute(sa.text("DROP TABLE example_marks"))
        # 0002 and every later revision (what they made goes too)
        forget_revisions_from(conn, "0002")
        for score, source in ((1.0, "human"), (1.0, "human"), (0.0, "llm-judge")):
            conn.execute(sa.text("INSERT INTO feedback (trace_id, name, score, source, "
                                 "created_at) VALUES (:t, 'user', :s, :src, 1.0)"),
                         {"t": a, "s": score, "src": source})
    forget_store(store_url)
    store = open_store(store_url)  # create=False: an existing store is migrated forward
    with store.read() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("feedback")}
        tables = set(sa.inspect(conn).get_table_names())
    assert {"expected", "expected_field", "score_low", "score_high", "feedback_key",
            "replaced_by"} <= columns and "example_marks" in tables
    old = rows(store, "source, feedback_key")
    assert [r["source"] for r in old] == ["user", "user", "automated"]
    # the first copy of a content is keyed; the copy the old import doubled is left alone
    assert [r["feedback_key"] is not None for r in old] == [True, False, True]
    path = tmp_path / "old.csv"
    path.write_text(f"trace_id,score,source\n{a},1,human\n{a},0,llm-judge\n")
    report = import_feedback(store, path)
    assert (report.accepted, report.duplicates) == (0, 2)
    # the partial unique index is in place: a replacement may keep its feedback_id
    first = record_feedback(a, score=1, feedback_id="k", store=store)
    assert record_feedback(a, score=0, feedback_id="k", replace=True,
                           store=store).replaced == (first.id,)


def test_record_of_a_trace_id_only_known_by_a_later_run_is_still_refused(sqlite_url):
    store = open_store(sqlite_url)
    write_run(store, 1)
    with pytest.raises(FeedbackError, match="unknown trace id"):
        record_feedback(trace_id_of(2), score=1, feedback_id="x", store=store)
    assert rows(store) == []
