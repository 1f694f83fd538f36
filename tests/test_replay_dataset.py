import json
import time

import pytest

from gepa_trace.replay.dataset import ExampleFilter, NotEnoughExamples, load_examples
from gepa_trace.store import FeedbackRow, open_store
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


def _feedback(store, trace_id, score, comment=None):
    with store.write() as conn:
        conn.execute(FeedbackRow.__table__.insert().values(
            trace_id=trace_id, name="user", score=score, comment=comment, source="human",
            created_at=time.time()))


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
