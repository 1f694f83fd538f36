"""The built-in `feedback` metric: production feedback alone is the signal, on any agent."""

from __future__ import annotations

import pytest

from gepa_trace.errors import ConfigError, LMError
from gepa_trace.optimizer.protocols import Example
from gepa_trace.replay.metrics import Feedback, judge_model, resolve_metric


def _record(id=1, score=0.0, comment=None, expected=None, source="user", label=None,
            expected_field=None):
    return {"id": id, "score": score, "comment": comment, "expected": expected,
            "source": source, "label": label, "expected_field": expected_field,
            "span_id": None, "replaced_by": None, "score_low": None, "score_high": None}


def _example(*records, output="Paris", expected=None):
    return Example(id="t", inputs={"question": "Capital of France's neighbour?"},
                   expected=expected, output=output, feedback=tuple(records))


def _no_judge(prompt):
    raise AssertionError("the judge must not be called")


def test_a_correction_is_the_expected_answer_and_the_feedback_names_its_source():
    ex = _example(_record(expected="Berlin", comment="no, the other one"))
    result = Feedback(_no_judge)(ex, {"answer": "Paris"})
    assert result.score == 0.0
    assert "expected 'Berlin' (a user's correction), the answer was 'Paris'" in result.feedback
    assert 'Users said about the recorded answer \'Paris\': "no, the other one"' in result.feedback
    assert Feedback(_no_judge)(ex, {"answer": "berlin."}).score == 1.0
    reviewed = _example(_record(expected="Berlin", source="reviewer"))
    assert "(a reviewer's correction)" in Feedback(_no_judge)(reviewed, "Rome").feedback


def test_a_correction_phrased_comment_and_an_approved_answer_say_where_they_came_from():
    phrased = _example(_record(comment="Correct answer: Berlin"))
    text = Feedback(_no_judge)(phrased, "Paris").feedback
    assert "expected 'Berlin' (a user's comment: 'Correct answer: Berlin')" in text
    approved = _example(_record(score=1.0), output={"answer": "Paris"})
    assert Feedback(_no_judge)(approved, {"answer": "Paris"}).score == 1.0
    wrong = Feedback(_no_judge)(approved, "Lyon")
    assert wrong.score == 0.0 and "(the recorded answer users approved)" in wrong.feedback


def test_a_longer_answer_that_contains_the_expected_one_earns_no_credit():
    ex = _example(_record(expected="Berlin"))
    result = Feedback(_no_judge)(ex, "The answer is Berlin, the capital.")
    assert result.score == 0.0 and "adds extra words, expected only 'Berlin'" in result.feedback


def test_a_correction_of_a_named_field_is_compared_with_that_field():
    ex = _example(_record(expected="Berlin", expected_field="city"))
    assert Feedback(_no_judge)(ex, {"answer": "It is Berlin", "city": "Berlin"}).score == 1.0
    assert Feedback(_no_judge)(ex, {"answer": "Berlin", "city": "Bonn"}).score == 0.0


def test_the_verdict_the_example_carries_is_used_when_present():
    ex = Example(id="t", inputs={"q": 1}, expected="Berlin", output="Paris",
                 feedback=(_record(source="reviewer", expected="Berlin"),),
                 meta={"verdict": {"expected": "Berlin", "expected_from": "correction",
                                   "expected_record": 1, "comments": [], "labels": []}})
    assert "(a reviewer's correction)" in Feedback(_no_judge)(ex, "Paris").feedback


def test_repeating_an_answer_users_rejected_scores_zero_without_the_judge():
    ex = _example(_record(comment="wrong"), output={"answer": "Paris"})
    result = Feedback(_no_judge)(ex, {"answer": "paris"})
    assert result.score == 0.0 and "users rejected this exact answer" in result.feedback
    assert '"wrong"' in result.feedback


def test_a_comment_without_a_score_is_not_a_rejection_of_the_recorded_answer():
    ex = _example(_record(score=None, comment="great, thanks"), output={"answer": "Paris"})
    result = Feedback(lambda prompt: "score: 0.9\nreason: the users were happy")(
        ex, {"answer": "Paris"})
    assert result.score == 0.9 and "rejected" not in result.feedback


def test_without_an_expected_answer_a_judge_reads_the_recorded_feedback():
    prompts = []

    def judge(prompt):
        prompts.append(prompt)
        return "score: 0.4\nreason: still long"

    ex = _example(_record(comment="too long", label="verbose"),
                  output="The capital city that you are asking about is Paris.")
    result = Feedback(judge)(ex, "It is Paris, I believe.")
    assert result.score == 0.4
    assert "still long" in result.feedback and '"too long"' in result.feedback
    assert 'comment=<untrusted-data source="comment">too long</untrusted-data>' in prompts[0]
    assert 'label=<untrusted-data source="label">verbose</untrusted-data>' in prompts[0]
    assert "The capital city that you are asking about is Paris." in prompts[0]


def test_a_judge_that_fails_is_an_error_never_a_score():
    ex = _example(_record(comment="meh"))
    with pytest.raises(LMError, match="no score"):
        Feedback(lambda prompt: "I cannot decide")(ex, "Lyon")
    with pytest.raises(ConfigError, match="judge LM"):
        Feedback(None)(ex, "Lyon")


def test_the_judge_of_the_feedback_metric_defaults_to_the_reflection_lms_family():
    assert judge_model("feedback", None, "gepa-sim/task", "gepa-sim/reflect") == "gepa-sim/judge"
    assert judge_model("feedback", None, None, "gepa-sim/reflect?seed=3") == \
        "gepa-sim/judge?seed=3"
    assert judge_model("feedback", None, None, "openai/gpt-4.1") == "openai/gpt-4.1"
    assert judge_model("feedback", "anthropic/claude", None, "openai/gpt-4.1") == \
        "anthropic/claude"
    assert judge_model("judge", None, "gepa-sim/task", "gepa-sim/reflect") == "gepa-sim/task"
    assert isinstance(resolve_metric("feedback", judge_lm=lambda p: "score: 1"), Feedback)
