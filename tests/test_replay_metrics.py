import pytest

from gepa_trace.errors import ConfigError
from gepa_trace.optimizer.protocols import Example, Score
from gepa_trace.replay.dataset import (
    SplitFractions,
    inputs_key,
    split_of,
)
from gepa_trace.replay.metrics import (
    Judge,
    contains,
    exact_match,
    feedback,
    parse_judgement,
    resolve_metric,
)


def _example(expected=None, output=None, fb=()):
    return Example(id="t", inputs={"question": "q"}, expected=expected, output=output,
                   feedback=tuple(fb))


def test_split_depends_only_on_the_inputs():
    ids = [inputs_key({"question": f"question {i}?"}) for i in range(2000)]
    splits = [split_of(t) for t in ids]
    assert splits == [split_of(t) for t in ids]
    share = splits.count("test") / len(ids)
    assert abs(share - SplitFractions().test) < 0.05
    with pytest.raises(ConfigError, match="sum to 1"):
        SplitFractions(0.5, 0.5, 0.5)


def test_exact_match_and_contains_normalize_case_and_articles():
    ex = _example(expected="The United Kingdom")
    assert exact_match(ex, {"answer": "united kingdom."}).score == 1.0
    assert contains(ex, "It is the United Kingdom, I think").score == 1.0
    assert "expected" in exact_match(ex, "France").feedback


def test_feedback_metric_quotes_the_users_correction():
    ex = _example(expected="France", fb=[{"score": 0.0, "comment": "the answer should be France"}])
    result = feedback(ex, "Paris")
    assert result.score == 0.0 and "should be France" in result.feedback
    rejected = _example(output={"answer": "Paris"}, fb=[{"score": 0.0, "comment": None}])
    assert feedback(rejected, "Paris").score == 0.0
    assert feedback(rejected, "Lyon").score == 0.5


def test_judge_reads_score_and_reason_and_refuses_garbage():
    assert parse_judgement("score: 0.8\nreason: close") == Score(0.8, "close")
    assert parse_judgement("I like it").score == 0.0
    seen = []
    judge = Judge(lambda p: seen.append(p) or "score: 1\nreason: ok")
    assert judge(_example(expected="France"), "France").score == 1.0
    assert "Expected answer (from user feedback): France" in seen[0]


def test_metric_spec_errors_name_the_spec():
    with pytest.raises(ConfigError, match="nope.module:fn"):
        resolve_metric("nope.module:fn")
    with pytest.raises(ConfigError, match="has no attribute"):
        resolve_metric("gepa_trace.replay.metrics:missing")
    with pytest.raises(ConfigError, match="package.module:function"):
        resolve_metric("justaname")
    assert resolve_metric("contains") is contains
