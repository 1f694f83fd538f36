"""gepa-sim/task: a deterministic instruction follower that reads only its prompt."""

from __future__ import annotations

import random
import time

import pytest

from gepa_trace.lm.sim import task
from gepa_trace.lm.sim.reflect import HARMFUL_RULES, PATTERNS, USELESS_RULES

ANSWER = "Answer the question using the evidence."
QUESTION = "In which country was the founder of Velora Works born?"
EVIDENCE = ("- Marta Ilves founded Velora Works in 1990.\n"
            "- Marta Ilves was born on 04/03/1961 in Tarvik, Norland.")


def ask(instruction: str, user: str) -> str:
    return task.reply([{"role": "system", "content": instruction},
                       {"role": "user", "content": user}], random.Random(0))


def answer_prompt(question: str = QUESTION, evidence: str = EVIDENCE) -> str:
    return f"Question: {question}\nEvidence:\n{evidence}\nAnswer:"


def test_task_model_follows_country_instruction():
    assert ask(ANSWER + " Answer with only the name.", answer_prompt()) == "Tarvik"
    told = ANSWER + "\nRules:\n- Answer with only the name.\n- If the question asks for a " \
                    "country, give the country, not the city."
    assert ask(told, answer_prompt()) == "Norland"


def test_same_question_gives_different_outputs_under_different_instructions():
    prompts = {
        "plain": ANSWER,
        "short": ANSWER + " Reply with just the answer itself, nothing else.",
        "country": ANSWER + " Answer with only the name. When a country is asked for, "
                            "resolve the city to its country.",
        "sentence": ANSWER + " Answer in a complete sentence so the reader has context.",
    }
    outputs = {k: ask(v, answer_prompt("Who founded Velora Works?")) for k, v in prompts.items()}
    assert outputs["short"] == "Marta Ilves"
    assert outputs["sentence"] == "Velora Works was founded by Marta Ilves."
    country = {k: ask(v, answer_prompt()) for k, v in prompts.items()}
    assert country["short"] == "Tarvik" and country["country"] == "Norland"
    assert len(set(country.values())) >= 3


def test_facts_come_only_from_the_passages_in_the_prompt():
    short = ANSWER + " Answer with only the name; if the question asks for a country, give " \
                     "the country, not the city."
    moved = EVIDENCE.replace("Tarvik, Norland", "Osterby, Valmark")
    assert ask(short, answer_prompt(evidence=moved)) == "Valmark"
    assert ask(short, answer_prompt(evidence="- Velora Works opened an office in Rome.")) \
        != "Norland"


def test_dates_are_read_month_first_unless_told_day_first():
    q = "In which month was the founder of Velora Works born?"
    plain = ANSWER + " Answer with only the name."
    assert ask(plain, answer_prompt(q)) == "April"  # 04/03 read as April 3rd
    told = plain + " Dates are written day/month/year: the first number is the day."
    assert ask(told, answer_prompt(q)) == "March"
    late = EVIDENCE.replace("04/03/1961", "24/03/1961")  # 24 cannot be a month
    assert ask(plain, answer_prompt(q, late)) == "March"


def test_year_questions_get_the_full_date_unless_only_the_year_is_asked():
    evidence = "- Velora Works was founded on 14/06/1987 by Marta Ilves."
    q = "In which year was Velora Works founded?"
    plain = ANSWER + " Answer with only the name."
    assert ask(plain, answer_prompt(q, evidence)) == "14/06/1987"
    assert ask(plain + " For year questions reply with just the year (four digits).",
               answer_prompt(q, evidence)) == "1987"


def test_says_unknown_only_when_told():
    evidence = ("- Marta Ilves founded Velora Works in 1990.\n- Marta Ilves was born on "
                "04/03/1961 and grew up in Tarvik, Norland; the place of birth is not recorded.")
    q = "In which city was the founder of Velora Works born?"
    plain = ANSWER + " Answer with only the name."
    assert ask(plain, answer_prompt(q, evidence)) == "Tarvik"  # a guess
    assert ask(plain + " If the evidence does not state the answer, reply unknown instead "
                       "of guessing.", answer_prompt(q, evidence)) == "unknown"


QUERY = "You write search queries for a question-answering assistant."


def test_query_writer_searches_the_notes_entity_only_when_told():
    user = (f"Question: {QUESTION}\nNotes so far: Velora Works was founded in 1990 by "
            "Marta Ilves.\nSearch query:")
    assert ask(QUERY, user) == "Velora Works"  # the notes' subject: the wrong entity
    assert ask(QUERY + " Resolve the founder first, then search for that person in the next "
                       "query.", user) == "Marta Ilves born"
    first_hop = f"Question: {QUESTION}\nNotes so far: (none)\nSearch query:"
    assert ask(QUERY, first_hop) == "Velora Works"


SELECT = "You select evidence for a question-answering assistant. Copy the best passage."
PASSAGES = ("[1] Anna Berg, a cousin of Marta Ilves, was born on 01/02/1950 in Kolby, Sudmark.\n"
            "[2] Marta Ilves founded Velora Works in 1990.\n"
            "[3] Marta Ilves was born on 04/03/1961 in Tarvik, Norland.")


def select_prompt(passages: str = PASSAGES) -> str:
    return (f"Question: {QUESTION}\nNotes so far: Marta Ilves founded Velora Works in 1990.\n"
            f"Search query: Marta Ilves born\nPassages:\n{passages}\nSelected passage:")


def test_evidence_selector_picks_by_its_instruction():
    first, founded, born = [line[4:] for line in PASSAGES.splitlines()]
    assert ask(SELECT, select_prompt()) == first
    assert ask(SELECT + " Ignore passages about a cousin or other relative of the person.",
               select_prompt()) == founded
    both = SELECT + (" Ignore passages about a cousin or relative. Pick the passage that "
                     "states the fact being looked for (who founded it, or where the person "
                     "was born).")
    assert ask(both, select_prompt()) == born
    assert ask(SELECT + " Use the second retrieved passage.", select_prompt()) == founded


def test_negated_sentences_do_not_switch_the_behaviour_they_name():
    rules = task.behaviours_of("Do not answer in a complete sentence.")
    assert "full_sentence" not in rules and "short_answer" in rules
    assert "second_passage" not in task.behaviours_of("Never use the second passage blindly.")


def test_every_phrasing_the_reflection_model_writes_is_understood():
    for pattern in PATTERNS:
        for rule in pattern.rules:
            assert pattern.behaviour in task.behaviours_of(rule), (pattern.name, rule)
    for rule in USELESS_RULES:
        assert task.behaviours_of(rule) == frozenset(), rule
    for step, rules in HARMFUL_RULES.items():
        for rule in rules:
            found = task.behaviours_of(rule)
            assert found and all(task.BEHAVIOURS[b][0] == step for b in found), rule


@pytest.mark.parametrize("instruction, step", [
    ("You write search queries for an assistant.", "query"),
    ("Choose the passage that answers the question.", "select"),
    ("Answer the question using the evidence.", "answer"),
])
def test_step_is_read_from_the_instruction(instruction, step):
    assert task.step_of(instruction, {}) == step


def test_task_model_answers_in_well_under_a_millisecond():
    msgs = [{"role": "system", "content": SELECT + " Ignore passages about a cousin."},
            {"role": "user", "content": select_prompt()}]
    rng = random.Random(0)
    task.reply(msgs, rng)
    started = time.perf_counter()
    for i in range(500):
        msgs[1]["content"] = select_prompt().replace("1990", str(1000 + i))
        task.reply(msgs, rng)
    assert (time.perf_counter() - started) / 500 < 0.001
