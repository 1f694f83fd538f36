"""gepa-sim/reflect: proposals derived only from the reflection prompt it is sent."""

from __future__ import annotations

import random

from gepa_trace.lm.fenced import extract_fenced
from gepa_trace.lm.sim import generate, reflect
from gepa_trace.lm.sim.task import behaviours_of

INSTRUCTION = "Answer the question using the evidence.\n\nRules:\n- Answer with only the name."
COUNTRY_FEEDBACK = "expected 'Norland'. expected the country (Norland), the answer names a city (Tarvik)"
YEAR_FEEDBACK = "expected '1987'. expected only the year 1987, the answer gives the full date"


def our_prompt(instruction: str, feedbacks: list[str], output: str = "Tarvik") -> str:
    """A reflection prompt in the layout of gepa-trace's own template."""
    parts = [("You improve one prompt of an agent. The current prompt of component "
              "`answerer`:"), "```", instruction, "```", "",
             "Records of this component on a minibatch:"]
    for i, fb in enumerate(feedbacks, 1):
        parts += [f"### Example {i}", "Inputs:",
                  "system: " + instruction.replace("\n", " "),
                  "user: Question: In which country was the founder of Velora Works born?",
                  "Evidence:", "- Marta Ilves was born on 04/03/1961 in Tarvik, Norland.",
                  "Outputs:", output, f"Feedback: score 0.0. {fb}", ""]
    parts.append("First diagnose in plain language what went wrong, then give the complete "
                 "new prompt in a fenced block.")
    return "\n".join(parts)


def propose(prompt: str, seed: int = 0) -> str:
    reply = reflect.reply([{"role": "user", "content": prompt}], random.Random(seed))
    new = extract_fenced(reply)
    assert new is not None, reply
    return new


def test_reflect_reply_is_a_function_of_its_prompt():
    prompt = our_prompt(INSTRUCTION, [COUNTRY_FEEDBACK, COUNTRY_FEEDBACK])
    msgs = [{"role": "user", "content": prompt}]
    first = generate("gepa-sim/reflect", msgs).text
    assert generate("gepa-sim/reflect", msgs).text == first
    assert first.index("Diagnosis") < first.index("```")


def test_different_feedback_gives_a_different_proposal():
    # Across seeds (most replies are not flawed) the proposals follow the feedback.
    country = [behaviours_of(propose(our_prompt(INSTRUCTION, [COUNTRY_FEEDBACK] * 2), s))
               for s in range(40)]
    year = [behaviours_of(propose(our_prompt(INSTRUCTION, [YEAR_FEEDBACK] * 2), s))
            for s in range(40)]
    assert sum("country_not_city" in b for b in country) >= 25
    assert sum("year_only" in b for b in year) >= 25
    assert not any("year_only" in b for b in country)
    assert not any("country_not_city" in b for b in year)
    msgs = lambda fb: [{"role": "user", "content": our_prompt(INSTRUCTION, [fb] * 2)}]
    assert generate("gepa-sim/reflect", msgs(COUNTRY_FEEDBACK)).text != \
        generate("gepa-sim/reflect", msgs(YEAR_FEEDBACK)).text


def test_reflect_keeps_existing_rules_and_has_a_seeded_flaw_rate():
    prompt = our_prompt(INSTRUCTION, [COUNTRY_FEEDBACK, COUNTRY_FEEDBACK, YEAR_FEEDBACK])
    outcomes = {"fixed": 0, "kept": 0}
    for seed in range(300):
        rules = behaviours_of(propose(prompt, seed))
        outcomes["fixed"] += "country_not_city" in rules
        outcomes["kept"] += "short_answer" in rules
    # About a quarter of replies are useless, harmful or drop a rule; the rest fix.
    assert 0.62 <= outcomes["fixed"] / 300 <= 0.88
    assert 0.85 <= outcomes["kept"] / 300 < 1.0


def test_reflect_does_not_blame_a_step_for_another_steps_failure():
    query_instruction = "You write search queries for a question-answering assistant."
    prompt = our_prompt(query_instruction, [COUNTRY_FEEDBACK] * 3)
    for seed in range(30):
        rules = behaviours_of(propose(prompt, seed))
        assert "country_not_city" not in rules


def test_reflect_fixes_the_query_writer_from_its_feedback():
    query_instruction = "You write search queries for a question-answering assistant."
    fb = ("expected 'Norland'. the second search looked up 'Velora Works' instead of the "
          "founder, Marta Ilves, named in the notes, so the passage was never retrieved")
    fixed = sum("search_new_entity" in behaviours_of(propose(our_prompt(query_instruction,
                                                                        [fb]), s))
                for s in range(40))
    assert fixed >= 25


def test_reflect_serves_gepa_default_prompt():
    from gepa.strategies.instruction_proposal import InstructionProposalSignature as Sig

    dataset = [
        {"Inputs": {"question": "In which country was the founder of Velora Works born?",
                    "evidence": "- Marta Ilves was born on 04/03/1961 in Tarvik, Norland."},
         "Generated Outputs": "Tarvik", "Feedback": COUNTRY_FEEDBACK},
        {"Inputs": {"question": "In which country was the founder of Drum Labs born?",
                    "evidence": "- Ivo Sarn was born on 11/12/1950 in Kolby, Sudmark."},
         "Generated Outputs": "Kolby",
         "Feedback": "expected 'Sudmark'. expected the country (Sudmark), the answer names a "
                     "city (Kolby)"},
    ]
    prompt = Sig.prompt_renderer({"current_instruction_doc": INSTRUCTION,
                                  "dataset_with_feedback": dataset})
    fixed = 0
    for seed in range(40):
        reply = reflect.reply([{"role": "user", "content": prompt}], random.Random(seed))
        new = Sig.output_extractor(reply)["new_instruction"]
        assert new.startswith("Answer the question using the evidence.")
        fixed += "country_not_city" in behaviours_of(new)
    assert fixed >= 25


def test_rules_quoted_in_example_inputs_are_not_taken_for_feedback():
    # The inputs repeat the instruction, which mentions "full sentence"; the feedback
    # is about the country only, so the fix must be the country rule.
    instruction = "Answer the question using the evidence. A full sentence is fine."
    prompt = our_prompt(instruction, [COUNTRY_FEEDBACK] * 3)
    for seed in range(20):
        reply = reflect.reply([{"role": "user", "content": prompt}], random.Random(seed))
        assert "full sentences where only" not in reply
    leaked = prompt.replace("Feedback: score 0.0.", "Note:")  # no feedback label: all text
    assert any("full sentences where only" in reflect.reply(
        [{"role": "user", "content": leaked}], random.Random(seed)) for seed in range(20))


def test_reflect_keeps_template_variables_of_a_whole_template():
    template = "Answer the question using the evidence.\n\nQuestion: {question}\nEvidence:\n{evidence}"
    prompt = our_prompt(template, [COUNTRY_FEEDBACK] * 2)
    for seed in range(10):
        new = propose(prompt, seed)
        assert "{question}" in new and "{evidence}" in new
        assert new.index("Rules:") < new.index("{question}")


def test_reflect_removes_the_rule_that_causes_the_failure():
    harmful = ("Answer the question using the evidence.\n\nRules:\n- Answer with only the name."
               "\n- Answer in a complete sentence so the reader has context.")
    assert {"short_answer", "full_sentence"} <= behaviours_of(harmful)
    fb = "expected 'Ivo Sarn'. the answer is a full sentence, expected only the name 'Ivo Sarn'"
    results = [behaviours_of(propose(our_prompt(harmful, [fb] * 2), s)) for s in range(40)]
    repaired = [b for b in results if "full_sentence" not in b and "short_answer" in b]
    assert len(repaired) >= 25
