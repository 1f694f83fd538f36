"""gepa-sim/reflect learns from what a real reflection LM is shown: the component's
inputs and outputs and a generic metric's text ("expected 'Norland' (a user's
correction), the answer was 'Tarvik'"), not only from sentences that name the mistake."""

from __future__ import annotations

import random

import pytest

from gepa_trace.lm.sim import reflect
from gepa_trace.lm.sim.diagnose import diagnose
from gepa_trace.lm.sim.task import behaviours_of
from gepa_trace.optimizer.protocols import ComponentRecord
from gepa_trace.optimizer.reflection import ReflectionExample, build_prompt

ANSWER = "Answer the question using the evidence."
SELECT = ("You select evidence for a question-answering assistant. Copy the retrieved "
          "passage that is most useful for answering the question.")
QUERY = ("You write search queries for a question-answering assistant. Write a short search "
         "query for the information needed next to answer the question. Reply with the "
         "query alone.")
Q_COUNTRY = "In which country was the founder of Velora Works born?"
PERSON = "Marta Ilves was born on 04/03/1961 in Tarvik, Norland."
COMPANY = "Velora Works was founded in 1990 by Marta Ilves."


def answer_call(question, evidence, output):
    lines = "\n".join(f"- {e}" for e in evidence)
    return ComponentRecord("answerer", f"system: {ANSWER}\n\nuser: Question: {question}\n"
                           f"Evidence:\n{lines}\nAnswer:", output)


def select_call(question, notes, query, passages, output):
    shown = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, 1))
    return ComponentRecord("evidence_selector", f"system: {SELECT}\n\nuser: Question: "
                           f"{question}\nNotes so far: {notes}\nSearch query: {query}\n"
                           f"Passages:\n{shown}\nSelected passage:", output)


def query_call(question, notes, output):
    return ComponentRecord("query_writer", f"system: {QUERY}\n\nuser: Question: {question}\n"
                           f"Notes so far: {notes}\nSearch query:", output)


def prompt(component, instruction, records, expected, got, score=0.0):
    feedback = (f"expected '{expected}' (a user's correction), the answer was '{got}'."
                if score < 1 else f"correct: the answer '{got}' matches a user's correction")
    example = ReflectionExample("e1", {"question": "q"}, records, feedback, score)
    return build_prompt(component, instruction, [example] * 3, max_tokens=8000)


def seen(text):
    _instruction, after = reflect.current_instruction(text)
    example = reflect.examples_of(text[after:])[0]
    return [name for name, _what in diagnose(example, reflect.feedback_of(example))]


CASES = {
    "city_for_country": prompt("answerer", ANSWER, [answer_call(Q_COUNTRY, [COMPANY, PERSON],
                                                                "Tarvik")], "Norland", "Tarvik"),
    "country_for_city": prompt("answerer", ANSWER, [answer_call(
        "In which city was the founder of Velora Works born?", [COMPANY, PERSON], "Norland")],
        "Tarvik", "Norland"),
    "full_sentence": prompt("answerer", ANSWER, [answer_call(
        "Who founded Velora Works?", [COMPANY, COMPANY], "Velora Works was founded by Marta "
        "Ilves.")], "Marta Ilves", "Velora Works was founded by Marta Ilves."),
    "full_date_for_year": prompt("answerer", ANSWER, [answer_call(
        "In which year was Velora Works founded?", [("On 12/05/1990, Marta Ilves founded "
                                                     "Velora Works.")], "12/05/1990")],
        "1990", "12/05/1990"),
    "month_first_dates": prompt("answerer", ANSWER, [answer_call(
        "In which month was the founder of Velora Works born?", [COMPANY, PERSON], "April")],
        "March", "April"),
    "guess_not_unknown": prompt("answerer", ANSWER, [answer_call(
        Q_COUNTRY, [COMPANY, ("Marta Ilves was born on 04/03/1961 and grew up in Tarvik, "
                    "Norland; the place of birth is not recorded.")], "Norland")],
        "unknown", "Norland"),
    "picked_cousin": prompt("evidence_selector", SELECT, [
        select_call(Q_COUNTRY, "(none)", "Velora Works", [COMPANY], COMPANY),
        select_call(Q_COUNTRY, COMPANY, "Marta Ilves", [
            "Ivo Brand, a cousin of Marta Ilves, was born on 01/01/1960 in Sela, Ostmark.",
            PERSON], "Ivo Brand, a cousin of Marta Ilves, was born on 01/01/1960 in Sela, "
                     "Ostmark.")], "Norland", "Ostmark"),
    "passage_without_fact": prompt("evidence_selector", SELECT, [select_call(
        "Who founded Velora Works?", "(none)", "Velora Works",
        ["Velora Works opened an office in Sela on 02/02/2002.", COMPANY],
        "Velora Works opened an office in Sela on 02/02/2002.")], "Marta Ilves", "unknown"),
    "searched_wrong_entity": prompt("query_writer", QUERY, [
        query_call(Q_COUNTRY, "(none)", "Velora Works"),
        query_call(Q_COUNTRY, COMPANY, "Velora Works")], "Norland", "Tarvik"),
}


@pytest.mark.parametrize("pattern", sorted(CASES))
def test_the_trace_shows_the_failure_a_careful_reader_would_see(pattern):
    assert seen(CASES[pattern]) == [pattern]


def test_nothing_is_seen_where_the_example_passed_or_the_correction_explains_nothing():
    passed = prompt("answerer", ANSWER, [answer_call(Q_COUNTRY, [COMPANY, PERSON], "Norland")],
                    "Norland", "Norland", score=1.0)
    assert seen(passed) == []
    # a wrong correction (users are sometimes wrong): the trace shows no known mistake
    wrong = prompt("answerer", ANSWER, [answer_call(Q_COUNTRY, [COMPANY, PERSON], "Norland")],
                   "Ostmark", "Norland")
    assert seen(wrong) == []
    # the notes already hold the expected answer: the search is not what failed
    year = prompt("query_writer", QUERY, [query_call(
        "In which year was Velora Works founded?", COMPANY, "Velora Works")], "1990", "x")
    assert seen(year) == []


def test_reflection_turns_a_generic_metrics_text_into_a_rule_the_task_model_follows():
    reply = reflect.reply([{"role": "user", "content": CASES["city_for_country"]}],
                          random.Random(0))  # rng 0: not one of the flawed replies
    new = reply.split("```")[1]
    assert "country_not_city" in behaviours_of(new)
    assert "Tarvik" in reply  # the diagnosis says what it saw
