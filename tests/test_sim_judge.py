"""gepa-sim/judge: scores an output against the rubric and evidence in its prompt."""

from __future__ import annotations

import random

from gepa_trace.lm.sim.judge import parse_reply, reply

PROMPT = """You judge one output of an agent component.
Rubric: the answer must be correct and give only the name, no full sentence.
Input:
Question: In which country was the founder of Velora Works born?
Recorded output: Tarvik
Feedback: thumbs down. comment: the answer should be Norland

Output: {output}

Reply with "score: <0..1>" and "reason: <one sentence>"."""


def judge(output: str, prompt: str = PROMPT) -> tuple[float, str]:
    text = reply([{"role": "user", "content": prompt.format(output=output)}], random.Random(0))
    parsed = parse_reply(text)
    assert parsed is not None, text
    assert text.splitlines()[0].startswith("score: ") and text.splitlines()[1].startswith("reason: ")
    return parsed


def test_judge_scores_against_the_correction_in_the_evidence():
    assert judge("Norland")[0] == 1.0
    assert judge("Tarvik")[0] == 0.0
    score, reason = judge("The founder of Velora Works was born in Norland.")
    assert 0.0 < score < 1.0 and "short answer" in reason


def test_judge_follows_the_users_verdict_on_the_recorded_output():
    prompt = ("## Rubric\nbe helpful\n## Recorded output\nTarvik\n## Feedback\nthumbs down\n"
              "## Output\n{output}\n")
    assert judge("Tarvik", prompt)[0] < 0.3
    assert judge("Norland", prompt)[0] == 0.5
    up = prompt.replace("thumbs down", "thumbs up")
    assert judge("Tarvik", up)[0] >= 0.9


def test_judge_checks_grounding_when_the_rubric_asks():
    prompt = ("Rubric: the answer must be supported by the input.\n"
              "Input: Marta Ilves was born in Tarvik, Norland.\n\nOutput: {output}\n")
    assert judge("Norland", prompt)[0] > judge("Atlantis", prompt)[0]


def test_parse_reply_rejects_malformed_replies():
    assert parse_reply("I think it is fine") is None
    assert parse_reply("score: 0.25\nreason: meh") == (0.25, "meh")


def test_judge_reads_the_log_only_judge_prompt_of_gepa_trace():
    from gepa_trace.optimizer.protocols import Example
    from gepa_trace.replay.metrics import Judge

    lm = lambda prompt: reply([{"role": "user", "content": prompt}], random.Random(0))
    messages = ("system: Answer the question using the evidence.\n\nuser: Question: In which "
                "country was the founder of Velora Works born?\nEvidence:\n- Marta Ilves was "
                "born on 04/03/1961 in Tarvik, Norland.\nAnswer:")

    def example(expected, feedback):
        return Example(id="1", inputs={"component": "answerer", "messages": messages},
                       expected=expected, output="Tarvik", feedback=(feedback,))

    corrected = example("Norland", {"score": 0.0, "comment": "the answer should be Norland"})
    assert Judge(lm)(corrected, "Norland").score == 1.0
    assert Judge(lm)(corrected, "Tarvik").score == 0.0
    thumbs_down = example(None, {"score": 0.0})
    assert Judge(lm)(thumbs_down, "Tarvik").score < Judge(lm)(thumbs_down, "Norland").score
    assert Judge(lm)(thumbs_down, "Atlantis").score < Judge(lm)(thumbs_down, "Norland").score


def test_judge_checks_an_answer_without_correction_against_what_the_agent_worked_from():
    from gepa_trace.optimizer.protocols import Example
    from gepa_trace.replay.metrics import Feedback

    lm = lambda prompt: reply([{"role": "user", "content": prompt}], random.Random(0))
    rejected = Example(id="1", inputs={"question": "In which country was the founder of "
                                                   "Velora Works born?"},
                       output={"answer": "Marta Ilves"}, feedback=({"score": 0.0,
                                                                   "comment": "wrong"},))
    context = {"evidence": ["Velora Works was founded in 1990 by Marta Ilves.",
                            "Marta Ilves was born on 04/03/1961 in Tarvik, Norland."]}
    metric = Feedback(lm)
    country = metric(rejected, {"answer": "Norland", **context})
    city = metric(rejected, {"answer": "Tarvik", **context})
    made_up = metric(rejected, {"answer": "Atlantis", **context})
    assert country.score > 0.5 > max(city.score, made_up.score)
    assert "city of 'in Tarvik, Norland'" in city.feedback and '"wrong"' in city.feedback
