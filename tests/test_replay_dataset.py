import json
import time

import pytest

from gepa_trace.errors import ConfigError, NotFoundError
from gepa_trace.replay.dataset import (
    ExampleFilter,
    NotEnoughExamples,
    expected_origin,
    inputs_key,
    load_examples,
    split_of,
)
from gepa_trace.store import FeedbackRow, open_store
from gepa_trace.store.marks import set_mark
from gepa_trace.store.spans import write_spans


def _root(i, agent="qa", run_id=None, start=None, question=None):
    attrs = {"openinference.span.kind": "AGENT", "gepa.agent": agent,
             "input.value": json.dumps({"question": question or f"q{i}"}),
             "output.value": json.dumps({"answer": f"a{i}"})}
    if run_id:
        attrs["gepa.run.id"] = run_id
    start = start or int(time.time() * 1e9)
    return {"trace_id": f"{i:032x}", "span_id": f"{i:016x}", "parent_span_id": None, "name": agent,
            "kind": "INTERNAL", "start_ns": start, "end_ns": start + 1000, "status_code": "OK",
            "attributes": attrs, "events": [], "resource": {"service.name": agent}}


def _feedback(store, trace_id, score, comment=None, **more):
    with store.write() as conn:
        conn.execute(FeedbackRow.__table__.insert().values(
            trace_id=trace_id, name="user", score=score, comment=comment,
            source=more.pop("source", "user"), created_at=time.time(), **more))


def test_examples_come_from_production_runs_with_feedback(store_url):
    store = open_store(store_url)
    write_spans(store, [_root(i) for i in range(40)])
    write_spans(store, [_root(100 + i, run_id="run-x") for i in range(10)])  # rollouts
    for i in range(0, 40, 2):
        _feedback(store, f"{i:032x}", 0.0, "the answer should be Paris")
    for i in range(1, 40, 4):
        _feedback(store, f"{i:032x}", 1.0)
    data = load_examples(store, "qa")
    examples = data.all()
    assert all(int(e.id, 16) < 100 for e in examples), "optimizer rollouts are not examples"
    assert len(examples) == 30  # 20 corrected + 10 approved; the rest have no signal
    assert data.skipped_without_signal == 10
    corrected = [e for e in examples if int(e.id, 16) % 2 == 0]
    assert {e.expected for e in corrected} == {"Paris"}
    approved = [e for e in examples if int(e.id, 16) % 2 == 1]
    assert all(e.expected == {"answer": f"a{int(e.id, 16)}"} for e in approved)
    again = load_examples(store, "qa")
    assert [e.id for e in again.test] == [e.id for e in data.test]


def test_time_window_dedupe_and_sample(store_url):
    store = open_store(store_url)
    old = int((time.time() - 3 * 86400) * 1e9)
    write_spans(store, [_root(i, start=old) for i in range(10)])
    write_spans(store, [_root(10 + i, question="same") for i in range(5)])
    write_spans(store, [_root(20 + i) for i in range(20)])
    with pytest.raises(NotEnoughExamples):
        load_examples(store, "qa", filters=ExampleFilter(since=time.time() - 86400,
                                                         sample=3), need_signal=False)
    data = load_examples(store, "qa", filters=ExampleFilter(since=time.time() - 86400),
                         need_signal=False)
    assert len(data.all()) == 21  # 20 distinct + one of the five identical inputs
    latest = max(range(10, 15))
    assert f"{latest:032x}" in {e.id for e in data.all()}, "de-duplication keeps the latest"
    duplicates = [x for x in data.left_out if x.reason == "duplicate"]
    assert len(duplicates) == 4
    assert {x.duplicate_of for x in duplicates} == {f"{latest:032x}"}
    assert all(f"same inputs as {latest:032x}" in x.detail for x in duplicates)
    assert data.outside_window == 10 and data.summary()["left_out_by_reason"] == \
        {"outside_window": 10, "duplicate": 4}
    assert not any(x.reason == "outside_window" for x in data.left_out), "counted, not read"
    listed = load_examples(store, "qa", filters=ExampleFilter(since=time.time() - 86400),
                           need_signal=False, list_outside=True)
    outside = {x.trace_id for x in listed.left_out if x.reason == "outside_window"}
    assert outside == {f"{i:032x}" for i in range(10)}


def test_unknown_agent_and_no_signal_are_clear_errors(store_url):
    store = open_store(store_url)
    with pytest.raises(NotEnoughExamples, match="no recorded runs of agent 'nobody'"):
        load_examples(store, "nobody")
    write_spans(store, [_root(i) for i in range(10)])
    with pytest.raises(NotEnoughExamples, match="10 without feedback"):
        load_examples(store, "qa")


def test_a_question_asked_again_keeps_its_split_and_the_dataset_its_order(store_url):
    """Splits and order follow the inputs: the same questions recorded again under new
    trace ids give the same dataset, and a repeated question is never both trained on
    and held out."""
    store = open_store(store_url)
    old = int((time.time() - 3 * 86400) * 1e9)
    write_spans(store, [_root(i, start=old, question=f"question {i}") for i in range(60)])
    tonight = load_examples(store, "qa", need_signal=False)
    write_spans(store, [_root(1000 + i, question=f"question {i}") for i in range(60)])
    everything = load_examples(store, "qa", filters=ExampleFilter(dedupe_inputs=False),
                               need_signal=False)
    for split in ("train", "val", "test"):
        first = [e.inputs["question"] for e in getattr(tonight, split)]
        assert first, split
        both = [e.inputs["question"] for e in getattr(everything, split)]
        assert sorted(both) == sorted(first * 2), f"{split} holds the same questions"
    tomorrow = load_examples(store, "qa", filters=ExampleFilter(since=time.time() - 86400),
                             need_signal=False)
    for split in ("train", "val", "test"):
        assert [e.inputs for e in getattr(tomorrow, split)] == \
            [e.inputs for e in getattr(tonight, split)]
        assert all(int(e.id, 16) >= 1000 for e in getattr(tomorrow, split))


def _split_ids(data):
    return {s: {e.id for e in getattr(data, s)} for s in ("train", "val", "test")}


def test_expected_answers_come_from_explicit_fields_and_narrow_phrasings_only(store_url):
    """The comment examples of issue 17: free text is evidence, never an answer, except
    the documented correction phrasings; a label is never the answer; an explicit
    correction wins; each example says where its expected answer came from."""
    store = open_store(store_url)
    write_spans(store, [_root(i) for i in range(8)])
    t = [f"{i:032x}" for i in range(8)]
    _feedback(store, t[0], 0.0, "the answer is wrong")
    _feedback(store, t[1], 0.0, "this should be shorter")
    _feedback(store, t[2], 0.0, "Correct answer: Paris")
    _feedback(store, t[3], 0.0, "the answer should be France")
    _feedback(store, t[3], 0.0, "no, the answer should be Lyon")  # newer, not a winner
    _feedback(store, t[3], 0.0, None, expected="Lyon", source="reviewer")
    _feedback(store, t[4], None, None, label="Paris")
    _feedback(store, t[5], 1.0)
    _feedback(store, t[6], None, "too long")
    data = load_examples(store, "qa", min_examples=0)
    by_id = {e.id: e for e in data.all()}
    assert by_id[t[0]].expected is None and by_id[t[1]].expected is None
    assert by_id[t[2]].expected == "Paris"
    assert by_id[t[2]].meta["verdict"]["expected_from"] == "comment"
    assert expected_origin(by_id[t[2]]).startswith('comment of feedback ')
    assert expected_origin(by_id[t[2]]).endswith(': "Correct answer: Paris"')
    assert by_id[t[3]].expected == "Lyon"
    assert expected_origin(by_id[t[3]]).startswith("correction (feedback ")
    assert expected_origin(by_id[t[3]]).endswith(", reviewer)")
    assert by_id[t[4]].expected is None, "a label is a tag, not the correct answer"
    assert by_id[t[5]].expected == {"answer": "a5"}
    assert expected_origin(by_id[t[5]]).startswith("approved output (feedback ")
    assert expected_origin(by_id[t[0]]) == "-"
    assert by_id[t[0]].meta["feedback_score"] == 0.0


def test_comments_and_labels_alone_are_feedback_to_learn_from(store_url):
    """The feedback metric's judge reads comments and labels as evidence: a run with
    only those is an example; a run with no feedback is left out, saying so."""
    store = open_store(store_url)
    write_spans(store, [_root(i) for i in range(4)])
    _feedback(store, f"{0:032x}", None, "too long")
    _feedback(store, f"{1:032x}", None, None, label="rude")
    data = load_examples(store, "qa", min_examples=0)
    assert {e.id for e in data.all()} == {f"{0:032x}", f"{1:032x}"}
    assert {(x.trace_id, x.detail) for x in data.left_out} == {
        (f"{2:032x}", "no feedback to learn from"), (f"{3:032x}", "no feedback to learn from")}


def test_every_run_is_an_example_or_left_out_with_its_reason(store_url):
    store = open_store(store_url)
    old = int((time.time() - 3 * 86400) * 1e9)
    write_spans(store, [_root(i, start=old) for i in range(3)])  # outside --since
    write_spans(store, [_root(10 + i) for i in range(30)])
    no_inputs, silent = _root(50), _root(52)
    del no_inputs["attributes"]["input.value"], silent["attributes"]["input.value"]
    write_spans(store, [no_inputs, silent, _root(51, question="q10")])  # 51 duplicates 10
    write_spans(store, [_root(200, run_id="run-x")])  # a rollout: neither
    for i in [*range(10, 40, 2), 50, 51]:
        _feedback(store, f"{i:032x}", 1.0)
    set_mark(store, [f"{12:032x}"], "excluded", "a test account")
    data = load_examples(store, "qa", filters=ExampleFilter(since=time.time() - 86400),
                         min_examples=0, list_outside=True)
    reasons = {x.trace_id: x.reason for x in data.left_out}
    examples = {e.id for e in data.all()}
    production = {f"{i:032x}" for i in [*range(3), *range(10, 40), 50, 51, 52]}
    assert examples | set(reasons) == production and not examples & set(reasons)
    assert reasons[f"{0:032x}"] == "outside_window"
    assert reasons[f"{50:032x}"] == "no_inputs"
    # with no feedback at all, that is the reason, whatever else the run lacks
    assert reasons[f"{52:032x}"] == "no_signal"
    assert next(x.run for x in data.left_out if x.trace_id == f"{52:032x}") is None
    assert next(x.run for x in data.left_out if x.trace_id == f"{11:032x}").inputs == \
        {"question": "q11"}
    assert reasons[f"{11:032x}"] == "no_signal"
    assert reasons[f"{12:032x}"] == "excluded"
    assert next(x.detail for x in data.left_out if x.trace_id == f"{12:032x}") == \
        "excluded by the user: a test account"
    assert reasons[f"{10:032x}"] == "duplicate"  # the same question, asked again later
    assert f"{51:032x}" in examples
    data.keep(lambda e: e.id != f"{14:032x}")
    assert f"{14:032x}" not in {e.id for e in data.all()}
    assert data.left_out[-1].reason == "not_replayable" and data.skipped_not_replayable == 1
    assert data.summary()["left_out_by_reason"]["excluded"] == 1


def test_golden_runs_always_go_to_validation(store_url):
    """Golden runs (marked, or given for one command) are validation examples whatever
    their hash, and so is every run that asks the same; an unknown id is refused."""
    store = open_store(store_url)
    write_spans(store, [_root(i) for i in range(60)])
    write_spans(store, [_root(100, run_id="run-x")])
    for i in range(60):
        _feedback(store, f"{i:032x}", 0.5 + (i % 2) / 2)
    hashed = {f"{i:032x}": split_of(inputs_key({"question": f"q{i}"})) for i in range(60)}
    train = [t for t, s in hashed.items() if s == "train"][:3]
    test = [t for t, s in hashed.items() if s == "test"][:3]
    set_mark(store, train, "golden")
    data = load_examples(store, "qa", filters=ExampleFilter(golden=tuple(test)))
    splits = _split_ids(data)
    assert set(train) | set(test) <= splits["val"]
    assert not (set(train) | set(test)) & (splits["train"] | splits["test"])
    assert all(e.meta["mark"] == "golden" for e in data.val if e.id in train + test)
    # a later run of a golden question is in validation too, never trained on
    write_spans(store, [_root(70, question="q" + str(int(test[0], 16)))])
    _feedback(store, f"{70:032x}", 1.0)
    again = load_examples(store, "qa", filters=ExampleFilter(golden=tuple(test),
                                                             dedupe_inputs=False))
    assert f"{70:032x}" in _split_ids(again)["val"]
    deduped = load_examples(store, "qa", filters=ExampleFilter(golden=tuple(test)))
    assert test[0] in _split_ids(deduped)["val"], "de-duplication keeps the golden run"
    # a golden run with no feedback is left out, and its question still is validation
    write_spans(store, [_root(80, question="q80"), _root(81, question="q80")])
    _feedback(store, f"{81:032x}", 1.0)
    pinned = load_examples(store, "qa", filters=ExampleFilter(golden=(f"{80:032x}",)))
    assert f"{81:032x}" in _split_ids(pinned)["val"]
    assert {x.trace_id: x.reason for x in pinned.left_out}[f"{80:032x}"] == "no_signal"
    for bad in ("f" * 32, f"{100:032x}"):  # unknown, and an optimizer rollout
        with pytest.raises(NotFoundError, match="golden trace id"):
            load_examples(store, "qa", filters=ExampleFilter(golden=(bad,)))
    with pytest.raises(ConfigError, match="rollout of optimization run run-x"):
        set_mark(store, [f"{100:032x}"], "golden")


def test_runs_without_feedback_are_left_out_for_what_asked_for_it_and_read_on_demand(store_url):
    """A run with no feedback record cannot be an example when feedback is asked for
    (the feedback metric, --with-feedback, a score filter): it is left out for that
    reason, and its ``run`` reads as the example it would have been."""
    store = open_store(store_url)
    write_spans(store, [_root(i) for i in range(24)])
    for i in range(8):
        _feedback(store, f"{i:032x}", i / 8, "the answer should be Paris" if i % 2 else None)
    set_mark(store, [f"{20:032x}"], "excluded", "a test account")
    set_mark(store, [f"{21:032x}"], "golden")
    silent = {f"{i:032x}" for i in range(8, 24)}
    everything = load_examples(store, "qa", min_examples=0, need_signal=False,
                               filters=ExampleFilter(dedupe_inputs=False))
    read = {e.id: e for e in everything.all()}
    read.update({x.trace_id: x.run for x in everything.left_out})
    cases = [({}, "no_signal", "no feedback to learn from"),
             ({"only_with_feedback": True}, "no_feedback", "no feedback (--with-feedback)"),
             ({"min_score": 0.5}, "score_filtered",
              "score outside --min-score/--max-score: no score")]
    for given, reason, detail in cases:
        need_signal = not given
        data = load_examples(store, "qa", filters=ExampleFilter(**given), min_examples=0,
                             need_signal=need_signal)
        left = {x.trace_id: x for x in data.left_out}
        assert silent <= set(left) and not silent & {e.id for e in data.all()}
        assert left[f"{20:032x}"].reason == "excluded"
        assert left[f"{20:032x}"].detail == "excluded by the user: a test account"
        assert {(left[t].reason, left[t].detail) for t in silent - {f"{20:032x}"}} == \
            {(reason, detail)}, given
        for trace_id in silent:
            run, eager = left[trace_id].run, read[trace_id]
            assert (run.inputs, run.output, run.expected, run.feedback, run.meta) == \
                (eager.inputs, eager.output, eager.expected, eager.feedback, eager.meta)
            assert run.split == split_of(inputs_key(run.inputs))
        assert left[f"{21:032x}"].run.meta["mark"] == "golden"
    # every run with a score is an example (a score of 0 too), the rest are left out
    data = load_examples(store, "qa", min_examples=0)
    assert {e.id for e in data.all()} == {f"{i:032x}" for i in range(8)}
    assert len(data.left_out) == len(silent)


def test_an_examples_feedback_and_verdict_are_plain_copies_of_the_records(store_url):
    """Example.feedback and meta["verdict"] hold what ``dataclasses.asdict`` gives (the
    dicts are built field by field for speed): same keys, same values, own copies."""
    from dataclasses import asdict

    from gepa_trace.store.queries import feedback_for_traces
    from gepa_trace.store.verdict import verdict

    store = open_store(store_url)
    write_spans(store, [_root(1)])
    trace = f"{1:032x}"
    _feedback(store, trace, 0.9, "Correct answer: Lima", label="geo")
    _feedback(store, trace, 1.0, source="reviewer")
    example = load_examples(store, "qa", min_examples=0).all()[0]
    records = feedback_for_traces(store, [trace])[trace]
    assert list(example.feedback) == [asdict(f) for f in records]
    v = verdict(records, {"answer": "a1"})
    expected = {**asdict(v), "comments": list(v.comments), "labels": list(v.labels)}
    assert example.meta["verdict"] == expected == v.to_dict()
    approved = verdict(records[1:], {"answer": "a1"})
    assert approved.to_dict()["expected"] == {"answer": "a1"}
    assert approved.to_dict()["expected"] is not approved.expected


def test_an_examples_feedback_is_every_record_on_its_run_oldest_first_with_or_without_window(
        store_url):
    """The records come from one join with the runs (feedback-first over the whole
    history, run-first within --since): on both paths each example holds all of its run's
    records, replaced and span-level ones included, oldest first and then by id, exactly
    as ``feedback_for_traces`` reads them; runs of other agents and rollouts add none."""
    from gepa_trace.store.queries import feedback_for_traces

    store = open_store(store_url)
    now = int(time.time() * 1e9)
    write_spans(store, [_root(i, start=now - i * 10**9) for i in range(1, 7)]
                + [_root(50, agent="other"), _root(60, run_id="run-x")])
    traces = [f"{i:032x}" for i in (1, 2, 3, 50, 60)]
    with store.write() as conn:  # recorded out of time order, two at one instant
        for n, (trace, created, score) in enumerate([
                (traces[0], 30.0, 0.2), (traces[0], 10.0, 0.9), (traces[1], 5.0, 1.0),
                (traces[0], 10.0, 0.4), (traces[2], 7.0, 0.0), (traces[3], 1.0, 1.0),
                (traces[4], 1.0, 1.0)]):
            conn.execute(FeedbackRow.__table__.insert().values(
                trace_id=trace, name="user", score=score, source="user", created_at=created,
                span_id=f"{n:016x}" if n == 3 else None))
    _feedback(store, traces[1], 0.0, "Correct answer: Quito", replaced_by=1)
    stored = feedback_for_traces(store, traces)
    for since in (None, time.time() - 3.5):
        data = load_examples(store, "qa", min_examples=0,
                             filters=ExampleFilter(since=since))
        got = {e.id: e.feedback for e in data.all()}
        assert got == {t: tuple(f.to_dict() for f in stored[t]) for t in traces[:3]}, since
        assert [f["created_at"] for f in got[traces[0]]] == [10.0, 10.0, 30.0]


def test_runs_left_out_unread_are_listed_newest_first_then_by_trace_id(store_url):
    """The window is read in its index's order and sorted newest first in Python; runs
    that started at the same instant keep trace id order, in ``left_out`` as before."""
    from gepa_trace.replay.dataset import LeftOut

    store = open_store(store_url)
    now = int(time.time() * 1e9)
    starts = {1: now, 2: now - 10**9, 3: now - 10**9, 4: now - 10**9, 5: now - 2 * 10**9}
    write_spans(store, [_root(i, start=s) for i, s in starts.items()])
    data = load_examples(store, "qa", min_examples=0)
    assert [x.trace_id for x in data.left_out] == [f"{i:032x}" for i in (1, 2, 3, 4, 5)]
    first = data.left_out[0]
    assert first == LeftOut(f"{1:032x}", "no_signal", "no feedback to learn from")
    assert first.run.inputs == {"question": "q1"}


def test_loading_examples_leaves_the_garbage_collector_as_it_found_it(store_url):
    """The collector is paused while a dataset is built (its survivors set off full
    collections), then back on, also when loading fails; left off if it was off."""
    import gc

    store = open_store(store_url)
    write_spans(store, [_root(i) for i in range(3)])
    assert gc.isenabled()
    data = load_examples(store, "qa", min_examples=0)
    assert gc.isenabled() and len(data.left_out) == 3 and gc.isenabled()
    with pytest.raises(NotEnoughExamples):
        load_examples(store, "qa")
    assert gc.isenabled()
    gc.disable()
    try:
        load_examples(store, "qa", min_examples=0)
        assert not gc.isenabled()
    finally:
        gc.enable()
