"""The reflection prompt and the parsing of its reply."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gepa_trace.errors import ConfigError
from gepa_trace.optimizer.protocols import ComponentRecord, Example, Rollout
from gepa_trace.optimizer.reflection import (
    build_prompt,
    parse_reply,
    reflection_examples,
)

sys.path.insert(0, str(Path(__file__).parent))

from test_sim_reflect import COUNTRY_FEEDBACK, INSTRUCTION, our_prompt


def test_reply_gives_the_diagnosis_first_and_the_instruction_in_the_last_block():
    reply = ("The answerer names the city when asked for the country.\n\n"
             "```text\nAnswer {question} with the country.\n```\n")
    proposal = parse_reply(reply)
    assert proposal.diagnosis == "The answerer names the city when asked for the country."
    assert proposal.instruction == "Answer {question} with the country."


def test_a_block_missing_its_closing_fence_runs_to_the_end():
    assert parse_reply("Fix it.\n```\nNew instruction\nsecond line").instruction == \
        "New instruction\nsecond line"


@pytest.mark.parametrize("reply", ["", "   ", "Just prose, no block.", "```\n\n```"])
def test_replies_without_a_usable_block_are_refused_with_a_reason(reply):
    with pytest.raises(ConfigError, match="reflection reply"):
        parse_reply(reply)


def test_only_the_components_records_reach_its_prompt():
    ex = Example(id="e1", inputs={"question": "Where?"})
    rollout = Rollout(score=0.0, feedback="expected the country",
                      records={"planner": [ComponentRecord("planner", "PLANNER IN", "PLAN OUT")],
                               "answerer": [ComponentRecord("answerer", "ANSWER IN", "Paris",
                                                            error="tool timeout")]})
    prompt = build_prompt("answerer", "Answer {question}.",
                          reflection_examples("answerer", [ex], [rollout]), max_tokens=2000)
    assert "ANSWER IN" in prompt and "Paris" in prompt and "tool timeout" in prompt
    assert "expected the country" in prompt
    assert "PLANNER IN" not in prompt and "PLAN OUT" not in prompt
    assert prompt.index("diagnosis") < prompt.rindex("```")


def test_long_inputs_are_cut_with_a_marker_never_silently():
    ex = [Example(id=f"e{i}", inputs={}) for i in range(3)]
    rollouts = [Rollout(score=0.0, feedback=f"wrong {i}",
                        records={"c": [ComponentRecord("c", "passage " * 3000, "out")]})
                for i in range(3)]
    # 700 tokens: the template's untrusted-data notice, its keep-unchanged paragraph and
    # each field's delimiters are about 170 tokens of this small budget; three cut
    # examples still fit.
    prompt = build_prompt("c", "Do it.", reflection_examples("c", ex, rollouts), max_tokens=700)
    assert len(prompt) <= 700 * 4
    assert prompt.count("characters cut ...]") >= 1
    for i in range(3):  # every example is still there, with its feedback
        assert f"wrong {i}" in prompt


def test_a_custom_template_needs_its_placeholders():
    with pytest.raises(ConfigError, match="<side_info>"):
        build_prompt("c", "Do it.", [], max_tokens=500, template="Improve: <curr_param>")
    text = build_prompt("c", "Do it.", [], max_tokens=500,
                        template="[<component>] <curr_param> | <side_info>")
    assert text.startswith("[c] Do it. | ")


@pytest.mark.parametrize("heading", [
    "New instruction:", "Instruction:", "New prompt:", "**New instruction:**",
    "## Proposed prompt", "### Updated system prompt", "Here is the new instruction:",
    "The new instruction is:", "> Revised instruction:", "New instruction:\n\nInstruction:"])
def test_the_diagnosis_never_ends_with_the_heading_of_the_instruction_block(heading):
    reply = (f"The answerer names the city when asked for the country.\n\n{heading}\n"
             "```\nAnswer {question} with the country.\n```\n")
    proposal = parse_reply(reply)
    assert proposal.diagnosis == "The answerer names the city when asked for the country."
    assert proposal.instruction == "Answer {question} with the country."
    inline = parse_reply("The answerer names the city. Here is the new instruction:\n"
                         "```\nAnswer {question}.\n```")
    assert inline.diagnosis == "The answerer names the city."


def test_a_diagnosis_that_only_mentions_the_prompt_is_kept_whole():
    for diagnosis in ["The planner ignores a rule of its prompt:",
                      "Fix the instruction.", "The answerer follows its instruction."]:
        assert parse_reply(f"{diagnosis}\n```\nAnswer {{question}}.\n```").diagnosis == \
            diagnosis


def test_the_simulated_reflection_models_diagnoses_end_in_a_sentence():
    import random

    from gepa_trace.lm.sim import reflect

    for seed in range(20):
        reply = reflect.reply([{"role": "user", "content": our_prompt(
            INSTRUCTION, [COUNTRY_FEEDBACK] * 3)}], random.Random(seed))
        assert "New instruction:" in reply  # as real models write it
        diagnosis = parse_reply(reply).diagnosis
        assert diagnosis.startswith("Diagnosis:") and diagnosis.rstrip()[-1] in ".!?\")", \
            diagnosis
