"""The one rule of ``store.verdict`` on the record shapes example loading sees most, and
on the rare ones: the bulk reader (``verdicts``) and ``verdict`` agree, a record reads the
same as a dict or a ``Feedback``, and a Verdict built without its ``__init__`` is a
Verdict like any other."""

from __future__ import annotations

import copy
import pickle
from dataclasses import asdict, fields

import pytest

from gepa_trace.errors import ConfigError
from gepa_trace.store.queries import Feedback
from gepa_trace.store.verdict import Verdict, correction_in, verdict, verdicts


def _record(n: int, **given) -> dict:
    values = {"id": n, "trace_id": "a" * 32, "span_id": None, "name": "user", "score": None,
              "label": None, "comment": None, "source": "user", "created_at": float(n),
              "expected": None, "expected_field": None, "score_low": None,
              "score_high": None, "feedback_key": None, "replaced_by": None}
    values.update(given)
    return values


CASES = {
    "one approving score": [_record(1, score=1.0)],
    "one low score with a comment": [_record(1, score=0.0, comment="wrong shipping day")],
    "a phrased correction": [_record(1, score=0.0, comment="No, the answer should be Lima.")],
    "a phrased correction in capitals": [_record(1, comment="EXPECTED: Lima")],
    "a comment naming the answer without a phrasing": [_record(1, comment="the answer is wrong")],
    "an explicit correction over a phrasing": [
        _record(1, comment="Correct answer: Quito"), _record(2, expected="Lima", score=0.0)],
    "corrections that disagree": [_record(1, expected="Lima"), _record(2, expected="Quito")],
    "a reviewer over users": [_record(1, expected="Lima"), _record(2, expected="Lima"),
                              _record(3, expected="Quito", source="reviewer")],
    "a replaced record and a span's": [
        _record(1, score=0.0, expected="Quito", replaced_by=2), _record(2, score=1.0),
        _record(3, score=0.0, comment="slow tool", span_id="b" * 16, label="latency")],
    "a declared range and an alias source": [
        _record(1, score=4.0, score_low=1.0, score_high=5.0, source="Expert "),
        _record(2, score=0.0, source="judge", label="auto")],
    "a source of no known name": [_record(1, score=1.0, source="someone")],
    "no records": [],
}


@pytest.mark.parametrize("name", CASES)
def test_a_run_reads_the_same_through_every_door(name):
    records = CASES[name]
    output = {"answer": "Lima"}
    v = verdict(records, output)
    assert verdicts()(records, output) == v
    assert verdict([Feedback(**r) for r in records], output) == v
    weights = {"user": 0.5, "reviewer": 0}
    assert verdicts(weights)(records, output) == verdict(records, output, weights)
    data = v.to_dict()
    assert data == {**asdict(v), "comments": list(v.comments), "labels": list(v.labels)}
    assert list(data) == [f.name for f in fields(Verdict)]


def test_the_common_shapes_give_the_verdicts_users_rely_on():
    assert verdict(CASES["one approving score"], "Lima") == Verdict(
        score=1.0, expected="Lima", expected_from="approved output", expected_record=1,
        records=1)
    assert verdict(CASES["one low score with a comment"], "Lima") == Verdict(
        score=0.0, records=1, comments=("wrong shipping day",))
    phrased = verdict(CASES["a phrased correction"], "Quito")
    assert (phrased.expected, phrased.expected_from, phrased.expected_record) == \
        ("Lima", "comment", 1)
    assert verdict(CASES["a phrased correction in capitals"]).expected == "Lima"
    assert verdict(CASES["a comment naming the answer without a phrasing"]).expected is None
    assert verdict(CASES["corrections that disagree"]).conflict.startswith("2 corrections")
    assert verdict(CASES["a reviewer over users"]).expected == "Quito"
    mixed = verdict(CASES["a replaced record and a span's"], "Lima")
    assert (mixed.score, mixed.records, mixed.comments, mixed.labels, mixed.expected) == \
        (1.0, 2, ("slow tool",), ("latency",), "Lima")
    ranged = verdict(CASES["a declared range and an alias source"])
    assert ranged.score == pytest.approx((0.75 * 2 + 0.0) / 3)
    assert verdict(CASES["a source of no known name"], "x").expected == "x"  # as a user's


def test_a_correction_phrasing_is_found_whatever_the_case_of_its_key_word():
    assert correction_in("the ANSWER should be Lima") == "Lima"
    assert correction_in("Expected: Lima") == "Lima"
    assert correction_in("the anſwer should be Lima") == "Lima"  # as re.IGNORECASE reads it
    assert correction_in("wrong shipping day") is None


def test_a_verdict_is_frozen_hashable_and_copies_like_one_built_by_hand():
    v = verdict(CASES["a phrased correction"], "Quito")
    by_hand = Verdict(**{f.name: getattr(v, f.name) for f in fields(Verdict)})
    assert v == by_hand and hash(v) == hash(by_hand) and repr(v) == repr(by_hand)
    assert pickle.loads(pickle.dumps(v)) == v == copy.deepcopy(v)
    with pytest.raises(AttributeError):
        v.score = 0.5  # type: ignore[misc]


def test_a_bulk_reader_refuses_a_bad_weight_before_reading_any_run():
    with pytest.raises(ConfigError, match="unknown source"):
        verdicts({"nobody": 1})
