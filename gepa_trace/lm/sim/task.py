"""``gepa-sim/task``: a small deterministic instruction follower.

It plays whichever step of a retrieve-and-answer agent its prompt asks for, reading
only the prompt: the instruction (the system messages) and the fields of the last user
message (``Question:``, ``Notes:``, ``Search query:``, ``Passages:`` numbered ``[1] ...``,
``Evidence:``). It has no answer key: facts reach it only through the passages in its
prompt. The same messages always give the same reply; ``rng`` is not used, so an edit
of the instruction changes an output only through the behaviours it switches on.

The step is recognized from the instruction's first sentence ("write a search query",
"select the passage", "answer the question"), else from the fields present.

Behaviours the instruction can switch on, in natural language (any sentence that
matches one of the phrasings; the patterns are in ``BEHAVIOURS``):

| behaviour       | step     | some phrasings that switch it on                                   | without it (failure mode)                                  |
|-----------------|----------|--------------------------------------------------------------------|------------------------------------------------------------|
| short_answer    | answer   | "answer with only the name"; "no full sentence"; "just the answer" | about a third of answers are full sentences                |
| full_sentence   | answer   | "answer in a complete sentence" (harmful)                          | -                                                          |
| country_not_city| answer   | "if the question asks for a country, give the country, not the city"; "resolve the city to its country" | a country question is answered with the city (the intermediate entity) |
| always_country  | answer   | "always answer with a country" (harmful: city questions too)       | -                                                          |
| day_first_dates | answer   | "dates are written day/month/year"; "the first number is the day"  | 04/03/1961 is read month first (April) when the day is <= 12 |
| year_only       | answer   | "when asked for a year, give only the four-digit year"             | a year question is answered with the whole date           |
| say_unknown     | answer   | "if the evidence does not state the answer, reply unknown"         | a guess: the first other name in the evidence             |
| search_new_entity | query  | "search for the person named in the notes, not the company"; "resolve the founder first, then search for that person" | the next query names the notes' first entity, often the company again |
| search_question_entity | query | "always search for the company named in the question" (harmful) | -                                              |
| stated_fact     | select   | "pick the passage that states the fact asked (who founded it, where they were born)"; "skip news passages" | the first passage is copied, even a news item  |
| not_relatives   | select   | "ignore passages about a cousin or relative of the person"; "the person themself, not a relative" | the first passage is copied, even a cousin's |
| second_passage  | select   | "use the second retrieved passage" (a heuristic: right only sometimes) | -                                                      |

Negated sentences ("do not answer in a full sentence") never switch on the positive
behaviour they mention. Sentences the model does not understand are ignored, as a
small model would.

Two generic steps serve agents other than the demo; nothing in them knows a task, the
options and rules come from the prompt:

| step     | recognized by                                                         | what it replies                                         |
|----------|-----------------------------------------------------------------------|---------------------------------------------------------|
| classify | the instruction names a closed set of options: "one of: a, b, c", "to one team: a, b, c", "one of the following labels: a, b or c" | one option for the message (the user message) |
| write    | the instruction's first sentence asks to "write a reply/response/message" | a one-line reply naming the value of the field the instruction names ("naming the team" -> the ``Team:`` field) |

Behaviours of the classify step:

| behaviour     | phrasings that switch it on                                        | without it (failure mode)                                       |
|---------------|--------------------------------------------------------------------|-----------------------------------------------------------------|
| keyword rules | "If the message mentions 'refund', answer billing."; "If the message mentions 'refund' or 'invoice', route it to billing."; "When the message contains 'refund', reply billing."; "Messages that mention 'refund' go to billing." | naive: the first option whose name appears in the message, else the first option listed (a fixed default), so most messages are misrouted |
| label_only    | "answer with only the team name"; "just the label"; "one word"; "nothing else" (short_answer's phrasings count too) | about a quarter of replies are a sentence ("The team is billing.") |

With keyword rules, the first rule (in the instruction's order) whose keyword appears in
the message decides; a keyword matches at the start of a word, case-insensitively
("refund" matches "refunded"). Negated rule sentences are ignored.
"""

from __future__ import annotations

import hashlib
import random
import re
from functools import lru_cache

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]

_NEG = re.compile(r"\b(not|never|no|avoid|don't|do not|without|instead of|rather than)\b")

# behaviour -> (step, phrasings). A phrasing is a regex searched in one lowercased
# sentence of the instruction. Phrasings marked with a leading "!" only count when the
# sentence has no negation (they name the behaviour positively).
BEHAVIOURS: dict[str, tuple[str, list[str]]] = {
    "short_answer": ("answer", [
        r"only (with )?(the |a |one )?(bare |short |exact )?(name|answer|entity|value|word|place|person|month|country|city)\b",
        r"\b(just|solely|nothing but) the (name|answer|entity|value)",
        r"(no|not a|not in a|never a|never use a|without a|avoid) (full |complete |whole )?sentences?",
        r"\b(bare|single|short)[- ](name|answer|entity|phrase|word)",
        r"nothing else",
        r"do not (add|include) (any )?(explanation|extra words|context)",
        r"(do not|don't|never) (answer|reply|respond|write)\b.{0,20}(in|as|with) (a )?(full|complete|whole) sentences?",
    ]),
    "full_sentence": ("answer", [
        r"!(answer|reply|respond|write).{0,25}(in|as|with) (a )?(full|complete|whole) sentences?",
    ]),
    "country_not_city": ("answer", [
        r"country.{0,60}\b(not|rather than|instead of)\b.{0,20}\bcity",
        r"\bcity.{0,40}\b(to|into) (its|the) country",
        r"(asks?|asking) (for|about) (a|the) country.{0,80}(answer|give|reply|respond|name|report|return)",
        r"(which|what) country (a|the) city (is|lies|belongs)",
        r"(answer|give|reply|respond|report).{0,40}country.{0,40}(not|never|rather than|instead of).{0,20}(city|town)",
    ]),
    "always_country": ("answer", [
        r"!always (answer|reply|respond|give).{0,20}(a|the) country",
    ]),
    "day_first_dates": ("answer", [
        r"dates?.{0,60}(day[ -]first|day/month|dd/mm|day, then (the )?month|day before the month|european)",
        r"(first|leading) (number|part|field) (of a date )?is the day",
        r"(second|middle) (number|part|field) (of a date )?is the month",
        r"(day|dd) (comes|is written|goes) (first|before the month)",
    ]),
    "year_only": ("answer", [
        r"year.{0,60}\b(only|just)\b.{0,20}(year|four[- ]digit|number)",
        r"(only|just) the (four[- ]digit )?year",
        r"year.{0,40}(not|never|rather than|instead of) (the )?(full|whole|complete|entire) date",
        r"four[- ]digit year",
    ]),
    "say_unknown": ("answer", [
        r"(if|when|unless).{0,80}(not|no|n't|missing|cannot|absent).{0,60}\bunknown\b",
        r"\bunknown\b.{0,60}\b(if|when|unless)\b.{0,80}(not|no|n't|missing|cannot|absent)",
        r"(say|answer|reply|respond|write) .?unknown.? (rather than|instead of|and do not|instead of guessing)",
        r"(do not|never|don't) guess",
    ]),
    "search_new_entity": ("query", [
        r"(search|query|look up|look for|queries).{0,80}\b(person|founder|people|new (entity|name)|intermediate)\b.{0,40}(notes|found|named|mentioned|from)",
        r"(search|query|look up|look for|queries).{0,60}(name|entity) (found|named|given|mentioned) in the notes",
        r"(resolve|find|identify) the (founder|person|intermediate entity|first hop).{0,40}(first|before).{0,60}(search|look|query)",
        r"(search|query|look).{0,60}(notes|founder|person).{0,40}(not|rather than|instead of) (the )?(company|question)",
        r"(not|rather than|instead of).{0,20}(company|entity) (from|in) the question.{0,40}(again|search|query)",
    ]),
    "search_question_entity": ("query", [
        r"!always (search|query|look up|look for).{0,40}(company|entity) (named |mentioned )?in the question",
    ]),
    "stated_fact": ("select", [
        r"(passage|evidence|one).{0,60}(states?|says|gives|contains|reports|mentions both).{0,60}(fact|founded|founder|born|birth|asked|relation|both)",
        r"(skip|ignore|avoid|discard).{0,40}(news|office|passages? that (only|merely|just) (mention|name))",
        r"not (just|merely|only) (mention|name)s?",
    ]),
    "not_relatives": ("select", [
        r"(cousin|relative|family member|sibling)",
        r"(the person|the entity|the founder) (themself|themselves|himself|herself|itself)",
    ]),
    "second_passage": ("select", [
        r"!(use|pick|choose|prefer|take|select).{0,20}(the )?second (retrieved )?passage",
        r"!(use|pick|choose|prefer|take|select).{0,20}passage \[?2\]?",
    ]),
}

_COMPILED = {name: (step, [(p.startswith("!"), re.compile(p.lstrip("!"))) for p in pats])
             for name, (step, pats) in BEHAVIOURS.items()}

_STEP_WORDS = [
    ("query", re.compile(r"\b(search quer(y|ies)|quer(y|ies)|look up|search)\b")),
    ("select", re.compile(r"\b(select|choose|pick|copy)\b.{0,60}\b(passage|evidence)")),
    ("select", re.compile(r"\bpassages?\b")),
    ("answer", re.compile(r"\banswer")),
]

_CAPWORD = r"[A-Z][a-z]+"
_ENTITY = re.compile(rf"{_CAPWORD}(?: {_CAPWORD})*")
_NOT_ENTITY = {"In", "On", "Who", "Which", "What", "When", "Where", "The", "A", "An", "It",
               "Born", "Question", "Notes", "Evidence", "Search", "None", *MONTHS}


def sentences(text: str) -> list[str]:
    """Lowercased sentences and list items of an instruction."""
    parts = re.split(r"(?<=[.!?;])\s+|\n+", text.lower())
    return [p.strip(" -*\t") for p in parts if p.strip(" -*\t")]


@lru_cache(maxsize=4096)
def behaviours_of(instruction: str) -> frozenset[str]:
    """The behaviours an instruction switches on (see the module table)."""
    found = set()
    for sentence in sentences(instruction):
        negated = bool(_NEG.search(sentence))
        for name, (_step, patterns) in _COMPILED.items():
            for positive_only, pattern in patterns:
                if positive_only and negated:
                    continue
                if pattern.search(sentence):
                    found.add(name)
                    break
    return frozenset(found)


def step_of(instruction: str, fields: dict[str, str]) -> str:
    """Which step the prompt asks for: query | select | answer, or a generic step
    (classify | write) when the instruction names options or asks for a reply."""
    if not {"passages", "evidence", "notes"} & set(fields):
        if options_of(instruction)[1]:
            return "classify"
        if _WRITE.search(instruction.lstrip().split("\n", 1)[0].lower()):
            return "write"
    first = sentences(instruction)[:1]
    for sentence in first:
        for step, pattern in _STEP_WORDS:
            if pattern.search(sentence):
                return step
    if "passages" in fields:
        return "select"
    if "evidence" in fields:
        return "answer"
    return "query" if "notes" in fields else "answer"


# -- reading the prompt ---------------------------------------------------------------
_LABELS = {
    "question": r"question|q",
    "notes": r"notes(?: so far)?|known facts|facts so far",
    "query": r"search query|query",
    "passages": r"passages|retrieved passages|documents|context|search results",
    "evidence": r"evidence|selected evidence|facts",
    # cues that end a user message ("Answer:"); they close the field above them
    "cue": r"answer|selected passage|selected evidence passage|your answer",
}
_LABEL_LINE = re.compile(
    r"^\s*(" + "|".join(f"(?P<{k}>{v})" for k, v in _LABELS.items()) + r")\s*:\s*(?P<rest>.*)$",
    re.IGNORECASE)


def read_fields(text: str) -> dict[str, str]:
    """Labelled fields of a user message; a field runs until the next label."""
    fields: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = _LABEL_LINE.match(line)
        if m:
            current = next(k for k in _LABELS if m.group(k) is not None)
            fields[current] = [m.group("rest")]
        elif current is not None:
            fields[current].append(line)
    fields.pop("cue", None)
    return {k: "\n".join(v).strip() for k, v in fields.items()}


def passages_of(block: str) -> list[str]:
    """``[1] text`` lines (or plain lines) of a passages/evidence block."""
    out = []
    for line in block.splitlines():
        line = re.sub(r"^\s*(\[\d+\]|\d+[.)]|-)\s*", "", line).strip()
        if line and line.lower() not in {"(none)", "none", "(no passages found)"}:
            out.append(line)
    return out


def entities(text: str) -> list[str]:
    """Capitalized names in order of appearance (sentence-initial words excluded)."""
    out = []
    for m in _ENTITY.finditer(text):
        words = m.group(0).split()
        while words and words[0] in _NOT_ENTITY:
            words = words[1:]
        if words:
            out.append(" ".join(words))
    return out


def question_entity(question: str) -> str:
    found = entities(question)
    return max(found, key=len) if found else ""


def _stable_unit(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


# -- the three steps ---------------------------------------------------------------------
def write_query(rules: frozenset[str], f: dict[str, str]) -> str:
    question = f.get("question", "")
    target = question_entity(question)
    notes = f.get("notes", "").strip()
    if not notes or notes.lower() in {"(none)", "none", "-"} or "search_question_entity" in rules:
        return target or question
    named = entities(notes)
    if "search_new_entity" in rules:
        new = [e for e in named if e not in target and target not in e]
        if new:
            return _with_verb(new[0], target, question)
    # Without guidance the query names the notes' subject, which is the company again
    # whenever the notes are phrased "X was founded ... by P".
    return _with_verb(named[0], target, question) if named else (target or question)


def _with_verb(entity: str, target: str, question: str) -> str:
    # A query about someone other than the question's entity carries the question's
    # verb ("Marta Ilves born"), as people write follow-up searches.
    if entity == target:
        return entity
    verb = next((v for v in ("born", "founded") if v in question.lower()), "")
    return f"{entity} {verb}".strip()


_RELATIVE = re.compile(r"(cousin|relative|sister|brother|friend) of ([A-Z][a-z]+(?: [A-Z][a-z]+)*)")


def select_passage(rules: frozenset[str], f: dict[str, str]) -> str:
    passages = passages_of(f.get("passages", ""))
    if not passages:
        return "(none)"
    if "second_passage" in rules and len(passages) > 1:
        return passages[1]
    query = f.get("query", "").strip()
    named = entities(query)
    query = named[0] if named else (query or question_entity(f.get("question", "")))
    keep = passages
    if "not_relatives" in rules:
        keep = [p for p in keep
                if not any(m.group(2) == query for m in _RELATIVE.finditer(p))] or keep
    if "stated_fact" in rules:
        wanted = _relation_words(f.get("question", ""), query)
        keep = [p for p in keep if query in p and any(w in p for w in wanted)] or keep
    return keep[0]


def _relation_words(question: str, query: str) -> tuple[str, ...]:
    # Searching the company of the question: its founding; searching anyone else: birth.
    q_entity = question_entity(question)
    if query and q_entity and (query in q_entity or q_entity in query):
        return ("founded",)
    return (" born",)


_BORN = re.compile(r"born on (\d\d)/(\d\d)/(\d{4})(?: in ([A-Z][a-z]+), ([A-Z][a-z]+))?")
_FOUNDED_DATE = re.compile(r"(?:(\d\d)/(\d\d)/)?(\d{4})")


def answer(rules: frozenset[str], f: dict[str, str]) -> str:
    question = f.get("question", "")
    q = question.lower()
    evidence = passages_of(f.get("evidence", ""))
    company = question_entity(question)
    kind = ("country" if "country" in q else "city" if "city" in q else
            "month" if "month" in q else "year" if "year" in q else
            "founder" if q.startswith("who") else "other")
    value = _read_answer(rules, kind, company, evidence)
    if value == "unknown":
        return "unknown" if "full_sentence" not in rules else "The answer is unknown."
    if "full_sentence" in rules or ("short_answer" not in rules
                                    and _stable_unit("verbose|" + question) < 0.25):
        return _sentence(kind, company, value)
    return value


def _read_answer(rules: frozenset[str], kind: str, company: str, evidence: list[str]) -> str:
    unknown_ok = "say_unknown" in rules
    if kind in ("founder", "year"):
        for p in evidence:
            if company and company in p and "founded" in p:
                if kind == "year":
                    m = _FOUNDED_DATE.search(p)
                    if m:
                        return m.group(3) if "year_only" in rules else m.group(0)
                else:
                    names = [e for e in entities(p) if e != company and company not in e]
                    if names:
                        return names[0]
        return "unknown" if unknown_ok else _guess(company, evidence)
    born = next(((p, m) for p in evidence for m in [_BORN.search(p)] if m), None)
    if born is None:
        return "unknown" if unknown_ok else _guess(company, evidence)
    passage, m = born
    day, month, _year, city, country = m.groups()
    if kind == "month":
        d, mo = int(day), int(month)
        # Read month first unless told otherwise, as a US-trained reader would; a
        # first number above 12 cannot be a month, so then the reading is forced.
        if "day_first_dates" not in rules and d <= 12:
            return MONTHS[d - 1]
        return MONTHS[mo - 1]
    if kind in ("country", "city", "other"):
        if city is None:  # born on a date, place not stated
            if unknown_ok:
                return "unknown"
            place = re.search(r"in ([A-Z][a-z]+), ([A-Z][a-z]+)", passage)
            if not place:
                return _guess(company, evidence)
            city, country = place.groups()
        want_country = ("always_country" in rules
                        or (kind == "country" and "country_not_city" in rules))
        return country if want_country else city
    return _guess(company, evidence)


def _guess(company: str, evidence: list[str]) -> str:
    for p in evidence:
        for e in entities(p):
            if e != company and company not in e:
                return e
    return "unknown"


def _sentence(kind: str, company: str, value: str) -> str:
    if kind in ("country", "city", "month"):
        return f"The founder of {company} was born in {value}."
    if kind == "founder":
        return f"{company} was founded by {value}."
    if kind == "year":
        return f"{company} was founded in {value}."
    return f"The answer is {value}."


# -- the generic steps (agents other than the demo) -------------------------------------
_OPTIONS = re.compile(
    r"\b(?:one of(?: the(?: following)?)?(?: (?P<noun1>[a-z]+?)s?)?|(?:to|into|as|with|pick|choose)"
    r" (?:one|a single|exactly one) (?!of\b)(?P<noun2>[a-z]+))\s*:\s*(?P<list>[^.;\n]+)"
    r"|\bone of (?P<list2>[a-z][\w-]*(?:, [a-z][\w-]*)+,? or [a-z][\w-]*)")
_WRITE = re.compile(r"^\W*(?:please )?write (?:a|an|one)\b[^.]{0,40}?\b(?:reply|response|message"
                    r"|email|note)\b")
_LABEL_ONLY = [re.compile(p) for p in (
    r"only (with )?(the |a |one )?(\w+ )?(name|label|word|category|option|class)\b",
    r"\b(just|solely|nothing but) the (\w+ )?(name|label|category|option|class)\b",
    r"\b(one|single) word\b",
    r"(no|not a|without a|never a) (full |complete |whole )?sentences?",
    r"nothing else",
)]
_QUOTED = re.compile(r"['\"‘’“”]([^'\"‘’“”]{1,40})['\"‘’“”]")
_RULE = re.compile(
    r"^(?:if|when|whenever) (?:the |a )?(?:\w+ )?(?:mentions?|contains?|includes?|says|uses|"
    r"talks about|is about|refers to)\s+(?P<kw>.+?),?\s+(?:then )?(?:answer|reply|respond|"
    r"return|choose|pick|say|route (?:it |the \w+ )?to|send (?:it )?to|classify (?:it )?as|"
    r"label (?:it )?(?:as )?|the (?:\w+ )?is)\s*:?\s*(?P<label>['\"‘“]?[\w -]+?['\"’”]?)\s*$"
    r"|^(?:\w+ )?(?:messages?|tickets?|requests?|texts?|inputs?) (?:that )?(?:mentions?|"
    r"mentioning|containing|contains?|about|with)\s+(?P<kw2>.+?)\s+(?:go(?:es)? to|belongs? to|"
    r"(?:are|is) (?:routed to|for|sent to)|mean)\s+(?P<label2>['\"‘“]?[\w -]+?['\"’”]?)\s*$")


def options_of(instruction: str) -> tuple[str, list[str]]:
    """The noun and the closed set of options an instruction names ("to one team:
    billing, shipping" -> ("team", ["billing", "shipping"])); ("", []) when none."""
    for sentence in sentences(instruction):
        m = _OPTIONS.search(sentence)
        if not m:
            continue
        listed = m.group("list") or m.group("list2") or ""
        parts = [p.strip(" '\"`*") for p in re.split(r",|\bor\b|\band\b|/", listed)]
        options = [p for p in parts if p and len(p.split()) <= 3]
        if len(options) >= 2:
            return (m.group("noun1") or m.group("noun2") or "answer"), options
    return "", []


def keyword_rules(instruction: str) -> list[tuple[tuple[str, ...], str]]:
    """``(keywords, label)`` of every keyword rule of the instruction, in order."""
    rules = []
    for sentence in sentences(instruction):
        sentence = sentence.rstrip(".!")
        m = _RULE.match(sentence)
        if not m or _NEG.search(m.group("kw") or m.group("kw2") or ""):
            continue
        if re.search(r"\b(not|never|n't)\b", sentence.split(",")[0]):
            continue
        kw = m.group("kw") or m.group("kw2")
        label = (m.group("label") or m.group("label2")).strip(" '\"‘’“”")
        words = _QUOTED.findall(kw) or [w for w in re.split(r",|\bor\b", kw) if w.strip()]
        words = tuple(w.strip().lower() for w in words if w.strip())
        if words and label:
            rules.append((words, label))
    return rules


def _mentions(text: str, word: str) -> bool:
    return re.search(r"(?<![a-z0-9])" + re.escape(word), text) is not None


def classify(instruction: str, message: str) -> str:
    """One option for ``message``: the first keyword rule that applies, else an option
    named in the message, else the first option listed; a sentence sometimes."""
    noun, options = options_of(instruction)
    text = message.lower()
    label = next((lab for words, lab in keyword_rules(instruction)
                  if any(_mentions(text, w) for w in words)), None)
    if label is None:
        named = sorted((m.start(), o) for o in options
                       for m in [re.search(r"(?<![a-z])" + re.escape(o.lower()), text)] if m)
        label = named[0][1] if named else options[0]
    if label_only(instruction):
        return label
    if _stable_unit("verbose|" + message) < 0.25:
        return f"The {noun} is {label}."
    return label


def label_only(instruction: str) -> bool:
    """Whether the instruction asks for the bare option (label_only, or short_answer)."""
    return "short_answer" in behaviours_of(instruction) or any(
        p.search(s) for s in sentences(instruction) for p in _LABEL_ONLY
        if not _NEG.search(s) or "sentence" in p.pattern)


def _message_of(user: str) -> str:
    """The text to classify: the user message without a trailing cue line ("Team:")."""
    lines = user.rstrip().splitlines()
    if lines and re.fullmatch(r"\s*[\w ]{1,30}:\s*", lines[-1]):
        lines = lines[:-1]
    return "\n".join(lines)


def write_reply(instruction: str, user: str) -> str:
    """A one-line reply naming the value of the field the instruction names."""
    fields = {k.strip().lower(): v.strip() for k, v in
              re.findall(r"(?m)^\s*([A-Za-z][\w ]{0,30}):[ \t]*(\S.*)$", user)}
    named = re.search(r"\b(?:nam(?:e|es|ing)|mention(?:s|ing)?|say(?:s|ing)? which) "
                      r"(?:the )?(\w+)", instruction.lower())
    key = named.group(1) if named and named.group(1) in fields else None
    value = fields.get(key) if key else next(reversed(fields.values()), "")
    what = key or "request"
    return f"Thank you for your message; our {value} {what} will take care of it."


def reply(messages: list[dict[str, str]], rng: random.Random) -> str:
    """The simulated task model's reply to an OpenAI-style message list."""
    system = "\n".join(m.get("content") or "" for m in messages if m.get("role") == "system")
    user = next((m.get("content") or "" for m in reversed(messages)
                 if m.get("role") == "user"), "")
    fields = read_fields(user)
    instruction = system
    if not instruction:  # no system message: the instruction is the text before the fields
        instruction = re.split(r"(?im)^\s*question\s*:", user)[0]
    from gepa_trace.lm.sim import receipts  # receipt extraction / ledger formatting agents

    if receipts.step_of(instruction):
        return receipts.task_reply(instruction, user)
    step = step_of(instruction, fields)
    if step == "classify":
        return classify(instruction, _message_of(user))
    if step == "write":
        return write_reply(instruction, user)
    rules = behaviours_of(instruction)
    if step == "query":
        return write_query(rules, fields)
    if step == "select":
        return select_passage(rules, fields)
    return answer(rules, fields)
