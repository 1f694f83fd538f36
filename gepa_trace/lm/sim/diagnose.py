"""Trace-based diagnosis for ``gepa-sim/reflect``: what a careful reader sees in one
example of a reflection prompt, from the component's inputs and output and the expected
answer quoted in the feedback, whatever metric wrote it.

A real reflection LM is shown a component's rendered inputs, what it produced, and a
generic metric's text such as "expected 'Norland' (a user's correction), the answer was
'Tarvik'". It does not need the metric to name the mistake: it compares. This module
does that comparison for the three steps of a retrieve-and-answer agent (the steps
``gepa-sim/task`` plays), and returns the names of ``reflect.PATTERNS`` it recognises:

| step   | what the example shows                                                     | pattern              |
|--------|----------------------------------------------------------------------------|----------------------|
| answer | a longer text that contains the expected value                             | full_sentence        |
| answer | the evidence says "in City, Country"; the country was expected, the city given | city_for_country |
| answer | the same, the other way round                                              | country_for_city     |
| answer | a year was expected, the answer is a whole date ending in it               | full_date_for_year   |
| answer | a month was expected; the answer is the month named by a date's first number | month_first_dates  |
| answer | 'unknown' was expected, the answer names something                         | guess_not_unknown    |
| select | the chosen passage is about a cousin/relative of the person searched for   | picked_cousin        |
| select | the chosen passage lacks the fact asked (neither the expected value nor the question's relation, "founded"/"born") while another retrieved passage about the same name states it | passage_without_fact |
| query  | the notes name a new person, the query repeats the question's entity, and the expected value is not in the notes yet | searched_wrong_entity |

Only examples that failed (their score is below 1, or the feedback quotes an expected
answer the output does not give) are read. Everything comes from the example's text;
nothing here knows any world's facts.
"""

from __future__ import annotations

import re

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]

_SECTION = re.compile(r"(?m)^#{1,6}\s*(.+?)\s*$")
_FIELD = re.compile(r"(?m)^(?:(?:user|human|system)\s*:\s*)?(Question|Notes so far|Notes|Search query|Passages|Evidence|"
                    r"Selected passage|Answer)\s*:[ \t]*")
_EXPECTED = [re.compile(r"\bexpected\s+(?:answer\s+)?'([^'\n]{1,200})'", re.IGNORECASE),
             re.compile(r"\bexpected\s+(?:answer\s+)?\"([^\"\n]{1,200})\"", re.IGNORECASE),
             re.compile(r"(?im)^\s*expected(?: answer)?\s*:\s*(.+?)\s*$")]
_SCORE = re.compile(r"(?im)^#{1,6}\s*score\s*\n\s*([-+]?\d+(?:\.\d+)?)")
_NAME = re.compile(r"\b[A-Z][a-z]+(?:[ -][A-Z][a-z]+)+\b")
_PLACE = re.compile(r"\bin ([A-Z][\w-]*(?: [A-Z][\w-]*)*), ([A-Z][\w-]*(?: [A-Z][\w-]*)*)")
_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b")
_RELATIVE = re.compile(r"\b(?:a |the )?(?:cousin|relative|brother|sister|nephew|niece)"
                       r"s? of ([A-Z][\w-]*(?: [A-Z][\w-]*)*)")
_STOP = {"which", "what", "who", "whom", "when", "where", "was", "were", "is", "the", "of",
         "in", "a", "an", "did", "does", "do", "by", "and", "for", "to", "on", "how"}


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", str(text).lower()).split())


def _words(text: str) -> set[str]:
    return set(_norm(text).split())


def expected_in(text: str) -> str | None:
    """The expected answer the example's feedback quotes ("expected 'Norland' ...")."""
    for pattern in _EXPECTED:
        m = pattern.search(text)
        if m:
            return m.group(1).strip().strip("'\"")
    return None


def records_of(example: str) -> list[tuple[str, str]]:
    """(inputs, output) of each call of the component shown in the example."""
    heads = list(_SECTION.finditer(example))
    inputs: str | None = None
    out: list[tuple[str, str]] = []
    for m, nxt in zip(heads, heads[1:] + [None]):
        body = example[m.end():nxt.start() if nxt else len(example)].strip()
        name = m.group(1).lower()
        if name.startswith(("input", "rendered")):
            inputs = body
        elif name.startswith(("output", "generated")):
            out.append((inputs or "", body))
            inputs = None
    return out


def fields_of(inputs: str) -> dict[str, str]:
    """``Question:``, ``Notes so far:``, ``Passages:`` ... values of a rendered input."""
    found: dict[str, str] = {}
    matches = list(_FIELD.finditer(inputs))
    for m, nxt in zip(matches, matches[1:] + [None]):
        key = "notes" if m.group(1).lower().startswith("notes") else m.group(1).lower()
        found[key] = inputs[m.end():nxt.start() if nxt else len(inputs)].strip()
    return found


def passages_of(text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"(?m)^\s*\[\d+\]\s*(.+)$", text)]


def failed(example: str, expected: str | None, outputs: list[str]) -> bool:
    m = _SCORE.search(example)
    if m:
        return float(m.group(1)) < 1.0
    return expected is not None and not any(_norm(expected) == _norm(o) for o in outputs[-1:])


def diagnose(example: str, feedback: str | None = None) -> list[tuple[str, str]]:
    """(pattern name, what was seen) for each failure the example shows; the expected
    answer is read from ``feedback`` (the example's feedback text; default: all of it)."""
    expected = expected_in(example if feedback is None else feedback)
    records = [(fields_of(i), o) for i, o in records_of(example)]
    if not records or not failed(example, expected, [o for _, o in records]):
        return []
    if any("passages" in f for f, _ in records):
        return _select(records, expected)
    if any("evidence" in f for f, _ in records):
        return _answer(records[-1][0], records[-1][1], expected)
    if any("notes" in f for f, _ in records):
        return _query(records, expected)
    return []


def _answer(fields: dict[str, str], output: str, expected: str | None) -> list[tuple[str, str]]:
    if not expected:
        return []
    got, want = _norm(output), _norm(expected)
    if got == want:
        return []
    evidence = fields.get("evidence", "")
    seen = f"expected '{expected}', the answer was '{output.strip()[:120]}'"
    if want == "unknown":
        return [("guess_not_unknown", seen + "; the evidence does not state it")]
    if re.fullmatch(r"\d{4}", expected.strip()) and re.search(
            r"\d{1,2}/\d{1,2}/" + re.escape(expected.strip()), output):
        return [("full_date_for_year", seen + ", the whole date")]
    if expected.strip().capitalize() in MONTHS:
        for day, month, _year in _DATE.findall(evidence):
            d, mo = int(day), int(month)
            if 1 <= mo <= 12 and MONTHS[mo - 1].lower() == want and 1 <= d <= 12 \
                    and d != mo and MONTHS[d - 1].lower() in got:
                return [("month_first_dates", seen + f"; the evidence's date {day}/{month}/"
                         f"{_year} was read month first")]
    for city, country in _PLACE.findall(evidence):
        c, k = _norm(city), _norm(country)
        if want == k and c in got and k not in got:
            return [("city_for_country", seen + f": the city of 'in {city}, {country}', "
                     "not the country")]
        if want == c and k in got and c not in got:
            return [("country_for_city", seen + f": the country of 'in {city}, {country}', "
                     "not the city")]
    if want and want in got and len(got.split()) > len(want.split()) + 1:
        return [("full_sentence", seen + ": a full sentence, not only the name or value")]
    return []


def _relation_stems(question: str) -> set[str]:
    """The question's relation words ("founded", "born"), as 5-letter stems."""
    words = [w for w in re.findall(r"\b[a-z]+\b", question) if w not in _STOP and len(w) > 3]
    return {w[:5] for w in words}


def _states(passage: str, stems: set[str]) -> bool:
    return any(w[:5] in stems for w in re.findall(r"\b[a-z]+\b", passage))


def _select(records: list[tuple[dict[str, str], str]],
            expected: str | None) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for fields, output in records:
        passages = passages_of(fields.get("passages", ""))
        chosen = output.strip()
        if not passages or not chosen:
            continue
        query_words = _words(fields.get("search query", "")) - _STOP
        stems = _relation_stems(fields.get("question", ""))
        others = [p for p in passages if _norm(p) != _norm(chosen)]
        relative = _RELATIVE.search(chosen)
        if relative and any(_norm(p).startswith(_norm(relative.group(1))) for p in others):
            found.append(("picked_cousin", (f"the chosen passage \"{chosen[:120]}\" is about a "
                          f"relative of {relative.group(1)}, not {relative.group(1)} themself")))
            continue
        want = _norm(expected) if expected else ""
        has_value = bool(want) and want in _norm(chosen)
        if has_value or _states(chosen, stems):
            continue
        better = [p for p in others if (_words(p) & query_words)
                  and ((want and want in _norm(p)) or _states(p, stems))
                  and not _RELATIVE.search(p)]
        if better:
            found.append(("passage_without_fact", (f"the chosen passage \"{chosen[:120]}\" "
                          f"does not state the fact asked; another retrieved passage does "
                          f"(\"{better[0][:120]}\")")))
    return found[:1]


def _query(records: list[tuple[dict[str, str], str]],
           expected: str | None) -> list[tuple[str, str]]:
    for fields, output in records:
        notes, question = fields.get("notes", ""), fields.get("question", "")
        if not notes or notes.strip().lower() in ("(none)", "none"):
            continue
        if expected and _norm(expected) in _norm(notes):
            return []  # the notes already hold the answer: the search is not the cause
        asked = {n for n in _NAME.findall(question)}
        new = [n for n in _NAME.findall(notes) if n not in asked
               and not (_words(n) & _words(question))]
        query = _words(output)
        repeats = any(_words(n) & query for n in asked)
        if new and repeats and not any(_words(n) & query for n in new):
            return [("searched_wrong_entity", (f"the notes name {new[0]}, but the search "
                     f"looked up '{output.strip()[:80]}' instead of {new[0]}"))]
    return []


__all__ = ["diagnose", "expected_in", "fields_of", "passages_of", "records_of"]
