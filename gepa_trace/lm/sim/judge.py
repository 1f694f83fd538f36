"""``gepa-sim/judge``: a simulated LLM judge.

It scores one output against the rubric and the evidence given in its prompt and
replies, always in this format (two lines, parsed by log-only replay)::

    score: 0.75
    reason: the output matches the correction in the evidence but is a full sentence

``score`` is a number in [0, 1] with at most two decimals; ``reason`` one sentence.

The prompt is read by sections, each introduced by a markdown heading or a label line
(``Rubric:``, ``Input:``/``Inputs:``/``Question:``, ``Output:``/``Response:``/
``Candidate output:``, ``Evidence:``/``Feedback:``, ``Expected:``/``Reference:``,
``Recorded output:``). What it judges, in order:

1. An expected answer stated in the evidence ("the answer should be France", "expected:
   France", "correct answer: France"): the output must say it (1.0 exactly, 0.6 when it
   is inside a longer text, 0.0 otherwise).
2. Else a user's verdict on the recorded output (thumbs up/down, a score, "wrong",
   "correct"): an output equal to the recorded one inherits the verdict (0.9 / 0.1); an
   output that differs from a rejected one gets 0.5 (it may be better, nothing proves
   it), unless the prompt shows what the agent worked from (an ``Output context:``
   section: the output's other fields, such as retrieved passages). Then it reads the
   output against it as a careful judge would: a full sentence 0.3; a name not stated
   there 0.3; where the question asks "which country" ("city", "year", "month", "who"),
   the city of an "in City, Country" phrase 0.1 (and the other way round), an answer of
   the asked kind that is stated there 0.7-0.8, a guess where the sources say the fact
   "is not recorded" 0.2 ("unknown" 0.8). It cannot tell a right source from a wrong
   one (a cousin's birthplace passes): it is a judge, not an answer key.
3. Else 0.7 (nothing to check against).

Then what it can check lowers the score: brevity ("only the name", "concise", "no full
sentence" in the rubric, or users saying the recorded answer was "too long") by 0.3 when
the output is a sentence; grounding ("supported by the
input/evidence/passages") by 0.3 when the output names something absent from the input.
The rng is not used: the same prompt gets the same verdict. Text quoted as untrusted
data (``<untrusted-data ...>`` markers) is read as if unquoted (``quoted.unquote``).
"""

from __future__ import annotations

import random
import re

from gepa_trace.lm.sim.quoted import unquote

_SECTION_NAMES = {
    "rubric": r"rubric|criteria|scoring guide|instructions for the judge",
    "input": r"inputs?|question|task input|rendered inputs?|messages",
    "output": r"(?:outputs?|response|candidate output|candidate answer|answer|new output)"
              r" to (?:judge|score|grade|evaluate)|outputs?|response|candidate output|"
              r"candidate answer|new output",
    "recorded": r"recorded output|original output|production output|previous output",
    "expected": r"expected(?: answer| output)?|reference(?: answer)?|correct answer",
    "evidence": r"evidence|feedback|user feedback|production feedback|correction",
    "context": r"output context(?: \([^)]*\))?|output'?s other fields",
}
_HEAD = re.compile(
    r"(?im)^\s*(?:#+\s*|\*\*)?(?P<name>" + "|".join(f"(?:{v})" for v in _SECTION_NAMES.values())
    + r")(?:\*\*)?\s*(?::\s*(?P<rest>.*))?$")

_RECORDED = re.compile(r"recorded (?:answer|output)\s*:?\s*['\"]([^'\"]+)['\"]", re.IGNORECASE)
_ASK = re.compile(r"(?i)^\s*(reply|respond|return|score the|rate the|grade the)\b")
_EXPECTED = [
    re.compile(r"(?:answer|it) should (?:have been|be)\s*:?\s*['\"]?([^'\".\n]+)", re.IGNORECASE),
    re.compile(r"(?:correct|right|true|expected) (?:answer|output)(?:\s*\([^)]*\))?(?: is| was)?"
               r"\s*:?\s*['\"]?([^'\".\n]+)", re.IGNORECASE),
    re.compile(r"^\s*expected(?: answer)?\s*:\s*['\"]?([^'\"\n]+?)['\"]?\s*$",
               re.IGNORECASE | re.MULTILINE),
    re.compile(r"\bexpected '([^']+)'", re.IGNORECASE),
]
_NEGATIVE = re.compile(r"thumbs?[ -]?down|👎|\bscore\s*[:=]\s*0(?:\.0+)?\b|\bwrong\b|"
                       r"\bincorrect\b|\bbad\b|not (?:right|correct|helpful)", re.IGNORECASE)
_POSITIVE = re.compile(r"thumbs?[ -]?up|👍|\bscore\s*[:=]\s*1(?:\.0+)?\b|\bcorrect\b|"
                       r"\bgreat\b|\bgood\b|\bhelpful\b", re.IGNORECASE)


_TOO_LONG = re.compile(r"too (?:long|verbose|wordy)|(?:shorter|more concise) please|"
                       r"just (?:the|give) (?:answer|name)", re.IGNORECASE)


def sections(prompt: str) -> dict[str, str]:
    """The prompt's sections by kind (rubric, input, output, recorded, evidence)."""
    found: dict[str, list[str]] = {}
    current = None
    inline = False  # "Label: value" sections end at a blank line, headed ones at a head
    for line in prompt.splitlines():
        m = _HEAD.match(line)
        if m:
            label = m.group("name").lower()
            current = next(k for k, v in _SECTION_NAMES.items()
                           if re.fullmatch(v, label, re.IGNORECASE))
            found.setdefault(current, [])
            inline = bool(m.group("rest"))
            if m.group("rest"):
                found[current].append(m.group("rest"))
            continue
        if _ASK.match(line) or (inline and not line.strip()):
            current = None  # the judge's own instructions, or the end of an inline value
            continue
        if current:
            found[current].append(line)
    return {k: "\n".join(v).strip().strip("`").strip() for k, v in found.items()}


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[\"'`.!?,;:]", "", text.lower())).strip()


def _is_sentence(text: str) -> bool:
    return len(text.split()) > 4 or text.strip().endswith(".")


def judge(prompt: str) -> tuple[float, str]:
    """(score, reason) for the output in ``prompt``."""
    s = sections(prompt)
    output = s.get("output", "").strip()
    evidence = s.get("evidence", "")
    rubric = s.get("rubric", "").lower()
    reasons: list[str] = []
    if not output:
        return 0.0, "there is no output to judge"
    stated = s.get("expected", "").strip().splitlines()
    expected = stated[0].strip().strip("'\"") if stated else None
    expected = expected or next((m.group(1).strip() for p in _EXPECTED
                                 for m in [p.search(evidence)] if m), None)
    if expected:
        if _norm(output) == _norm(expected):
            score = 1.0
            reasons.append(f"the output is the expected answer '{expected}'")
        elif _norm(expected) in _norm(output):
            score = 0.6
            reasons.append(f"the output contains the expected answer '{expected}' "
                           "inside a longer text")
        else:
            score = 0.0
            reasons.append(f"the output does not give the expected answer '{expected}'")
    else:
        quoted = _RECORDED.search(evidence)
        recorded = s.get("recorded", "").strip() or (quoted.group(1) if quoted else "")
        same = bool(recorded) and _norm(recorded) == _norm(output)
        checked = None if same else _checked(s.get("input", ""), output, s.get("context", ""))
        if _NEGATIVE.search(evidence):
            score = 0.1 if same or not recorded else 0.5
            reasons.append("the user rejected the recorded output" +
                           (" and this output is the same" if same else
                            ", this output differs from it" if recorded else ""))
            if checked is not None:
                score = checked[0]
                reasons.append(checked[1])
        elif _POSITIVE.search(evidence):
            score = 0.9 if same or not recorded else 0.5
            reasons.append("the user accepted the recorded output" +
                           ("" if same or not recorded else ", this output differs from it"))
        else:
            score = 0.7
            reasons.append("the evidence gives nothing to check the output against")
    if re.search(r"only the (name|answer|entity|value)|concise|short|brief|no (full )?sentence"
                 r"|one word|a single", rubric) and _is_sentence(output) and score > 0:
        score -= 0.3
        reasons.append("the rubric asks for a short answer but the output is a full sentence, not only the name")
    if _TOO_LONG.search(evidence) and _is_sentence(output) and score > 0:
        score -= 0.3
        reasons.append("users said the recorded answer was too long and this output is "
                       "still a full sentence")
    if re.search(r"grounded|supported by|based on the (input|evidence|passages)|no made[- ]up",
                 rubric):
        source = s.get("input", "") + "\n" + s.get("context", "")
        names = re.findall(r"\b[A-Z][a-z]{2,}\b", output)
        missing = [n for n in names if n not in source and n.lower() != "unknown"]
        if source and missing and score > 0:
            score -= 0.3
            reasons.append(f"'{missing[0]}' does not appear in the input")
    return max(0.0, min(1.0, round(score, 2))), "; ".join(reasons)


_ASKS = re.compile(r"\b(?:which|what) (country|city|town|year|month|day|date)\b|^\W*(who)\b",
                   re.IGNORECASE | re.MULTILINE)
_PLACE = re.compile(r"\bin ([A-Z][\w-]*(?: [A-Z][\w-]*)*), ([A-Z][\w-]*(?: [A-Z][\w-]*)*)")
_MONTHS = {"january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december"}
_NOT_STATED = re.compile(r"not (?:recorded|known|stated)|is unknown", re.IGNORECASE)


def _checked(question: str, output: str, context: str) -> tuple[float, str] | None:
    """What a careful judge sees by reading the output against what the agent worked
    from (the output's other fields): does it answer what the question asks, is it
    stated there. None when there is nothing to check against."""
    if not context.strip():
        return None
    ask = next((a or b for a, b in _ASKS.findall(question)), "").lower()
    got = _norm(output)
    if _is_sentence(output):
        return 0.3, "the output is a full sentence, not only the answer"
    if ask in ("country", "city", "town") and _NOT_STATED.search(context):
        if got == "unknown":
            return 0.8, "the agent's sources say this is not recorded, and it says unknown"
        return 0.2, "the agent's sources say this is not recorded, but the output names one"
    if ask == "month":  # the sources write dates as numbers
        return (0.7, "a month, as asked") if got in _MONTHS else \
            (0.2, "a month was asked for; the output is not a month")
    if got != "unknown" and got not in _norm(context):
        return 0.3, f"'{output}' is not stated in what the agent retrieved"
    for city, country in _PLACE.findall(context):
        if ask == "country" and got == _norm(city):
            return 0.1, f"a country was asked for; '{output}' is the city of 'in {city}, {country}'"
        if ask in ("city", "town") and got == _norm(country):
            return 0.1, f"a city was asked for; '{output}' is the country of 'in {city}, {country}'"
        if got in (_norm(city), _norm(country)) and ask in ("country", "city", "town"):
            return 0.8, "the output answers what was asked and is stated in the agent's sources"
    places = _PLACE.findall(context)
    if ask in ("country", "city", "town") and places and got != "unknown":
        return 0.2, f"a {ask} was asked for; '{output}' is not a place the sources name"
    if ask == "year":
        if re.fullmatch(r"\d{4}", got):
            return 0.8, "a year, stated in the agent's sources"
        return 0.2, "a year was asked for; the output is not a year alone"
    if ask == "who" and re.fullmatch(r"[A-Z][\w-]+(?: [A-Z][\w-]+)+", output.strip()):
        return 0.8, "a name, stated in the agent's sources"
    return None


def reply(messages: list[dict[str, str]], rng: random.Random) -> str:
    """``score: <0..1>`` and ``reason: <sentence>`` on two lines."""
    prompt = "\n\n".join(m.get("content") or "" for m in messages if m.get("role") != "assistant")
    score, reason = judge(unquote(prompt))
    return f"score: {score:.2f}\nreason: {reason}"


def parse_reply(text: str) -> tuple[float, str] | None:
    """(score, reason) from a judge reply in the format above, or None if malformed."""
    m = re.search(r"(?im)^\s*score\s*[:=]\s*([01](?:\.\d+)?|\.\d+)\s*$", text)
    if not m:
        return None
    reason = re.search(r"(?im)^\s*reason\s*[:=]\s*(.*)$", text)
    return min(1.0, max(0.0, float(m.group(1)))), (reason.group(1).strip() if reason else "")
