import pytest

from gepa_trace.errors import ConfigError, LMError
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


def test_judge_reads_score_and_reason_and_refuses_garbage():
    assert parse_judgement("score: 0.8\nreason: close") == Score(0.8, "close")
    with pytest.raises(LMError, match="no score"):
        parse_judgement("I like it")  # a judge that fails is a failed rollout, not a 0
    seen = []
    judge = Judge(lambda p: seen.append(p) or "score: 1\nreason: ok")
    assert judge(_example(expected="France"), "France").score == 1.0
    assert ("Expected answer (from the example's expected answer): "
            '<untrusted-data source="expected answer">France</untrusted-data>') in seen[0]


def test_metric_spec_errors_name_the_spec():
    with pytest.raises(ConfigError, match="nope.module:fn"):
        resolve_metric("nope.module:fn")
    with pytest.raises(ConfigError, match="has no attribute"):
        resolve_metric("gepa_trace.replay.metrics:missing")
    with pytest.raises(ConfigError, match="package.module:function"):
        resolve_metric("justaname")
    assert resolve_metric("contains") is contains
