"""The example agent's oracle: exact match against the world's truth, and a feedback
sentence that names the first thing that went wrong, in the user's words.

``gepa-trace demo`` never optimizes with it: its optimization uses the built-in
``feedback`` metric on the recorded feedback alone, and this oracle only reports the
TRUE held-out accuracy afterwards (``demo.cycle.true_held_out``) and simulates what users
know in ``demo.traffic``. Tests and benchmarks that study the optimizer itself use it.

The truth comes from the demo world (the question names a company, the world knows its
founder), so the metric also scores questions read back from production traces that
carry no expected answer. For a question the world does not know, ``example.expected``
is used. The feedback walks the agent's steps in order (first selection, second search,
second selection, answer) and reports the first mistake, because fixing an early step is
what makes the later ones right:

- "expected the country (Norland), the answer names a city (Tarvik)"
- "the answer is a full sentence, expected only the name 'Marta Ilves'"
- "the second search looked up 'Acme Works' again instead of the founder, Marta Ilves, ..."
"""

from __future__ import annotations

import re
from typing import Any

from gepa_trace.demo.world import MONTHS, World, answer_of, world
from gepa_trace.optimizer.protocols import Example, Score

_QUESTION_FORMS = [
    ("country", re.compile(r"^In which country was the founder of (.+) born\?$")),
    ("city", re.compile(r"^In which city was the founder of (.+) born\?$")),
    ("month", re.compile(r"^In which month was the founder of (.+) born\?$")),
    ("founder", re.compile(r"^Who founded (.+)\?$")),
    ("year", re.compile(r"^In which year was (.+) founded\?$")),
]


def parse_question(question: str, w: World) -> tuple[str, str] | None:
    """(kind, company) of a demo question, or None if the world does not know it."""
    for kind, form in _QUESTION_FORMS:
        m = form.match(question.strip())
        if m and m.group(1) in w.companies:
            return kind, m.group(1)
    return None


def normalize(text: Any) -> str:
    text = str(text or "").strip().lower()
    text = re.sub(r"[\"'`.!?,;:]+$", "", text)
    return re.sub(r"^[\"'`]+|[\"'`]+$", "", text).strip()


def metric(example: Example, output: Any, trace: Any = None, *, world_seed: int = 0) -> Score:
    """Score 1.0 for the right answer, else 0.0 with a sentence saying what went wrong."""
    out = output if isinstance(output, dict) else {"answer": output}
    answer = str(out.get("answer") or "")
    question = str((example.inputs or {}).get("question", ""))
    w = world(world_seed)
    parsed = parse_question(question, w)
    if parsed is None:
        if example.expected is None:
            return Score(0.0, "no expected answer is known for this question")
        if normalize(answer) == normalize(example.expected):
            return Score(1.0, "correct")
        return Score(0.0, f"expected '{example.expected}', the answer was '{answer}'")
    kind, company = parsed
    expected = answer_of(w, kind, company)
    if normalize(answer) == normalize(expected):
        return Score(1.0, "correct")
    return Score(0.0, _diagnose(w, kind, company, expected, answer, out))


def _diagnose(w: World, kind: str, company: str, expected: str, answer: str,
              out: dict) -> str:
    founder = w.founder_of(company)
    queries = list(out.get("queries") or [])
    evidence = list(out.get("evidence") or [])
    passages = {p.id: p for p in w.passages}
    company_passage = passages[f"c{list(w.companies).index(company)}"].text
    person_passage = next(p.text for p in w.passages if p.kind == "person" and p.about == founder.name)
    head = f"expected '{expected}'. "

    # 1. The first selection must be the passage saying who founded the company.
    if evidence and evidence[0].strip() != company_passage:
        return head + (f"the first selected passage (\"{evidence[0]}\") does not say who "
                       f"founded {company}; the retrieved passages included the one that does "
                       f"(\"{company_passage}\")")
    needs_person = kind in ("country", "city", "month")
    if needs_person and len(queries) >= 2 and founder.name not in queries[1]:
        return head + (f"the second search looked up '{queries[1]}' instead of the founder, "
                       f"{founder.name}, named in the notes, so the passage about where and "
                       f"when {founder.name} was born was never retrieved")
    if needs_person and len(evidence) >= 2 and evidence[1].strip() != person_passage:
        chosen = evidence[1]
        cousin = w.cousins.get(founder.name)
        if cousin and chosen.startswith(cousin):
            return head + (f"the second selected passage is about {cousin}, a cousin of "
                           f"{founder.name}, not about the founder {founder.name} themself")
        return head + (f"the second selected passage (\"{chosen}\") does not say where and "
                       f"when {founder.name} was born; the retrieved passages included the "
                       f"one that does (\"{person_passage}\")")
    # 2. The evidence was right: the answer itself is wrong.
    a = normalize(answer)
    if kind == "country" and founder.birthplace_known and normalize(founder.city) in a \
            and normalize(founder.country) not in a:
        return head + (f"expected the country ({founder.country}), the answer names a city "
                       f"({founder.city})")
    if kind == "city" and founder.birthplace_known and normalize(founder.country) in a \
            and normalize(founder.city) not in a:
        return head + (f"expected the city ({founder.city}), the answer names the country "
                       f"({founder.country})")
    if expected == "unknown":
        return head + (f"the evidence does not state where {founder.name} was born, so the "
                       f"answer should be 'unknown', not a guess ('{answer}')")
    if kind == "year" and re.search(r"\d\d/\d\d/" + expected, answer):
        return head + (f"expected only the year {expected}, the answer gives the full date "
                       f"('{answer}')")
    if kind == "month":
        day, month, _year = founder.birth_date.split("/")
        if int(day) <= 12 and int(day) != int(month) and normalize(MONTHS[int(day) - 1]) in a:
            return head + (f"the answer read the date {founder.birth_date} month first; dates "
                           f"in the passages are written day/month/year, so the month is "
                           f"{expected}")
    if normalize(expected) in a:
        what = "the year" if kind == "year" else "the name"
        return head + (f"the answer is a full sentence, expected only {what} '{expected}'")
    if a == "unknown":
        return head + "the answer says 'unknown' although the evidence states it"
    return head + f"the answer '{answer}' is wrong"
