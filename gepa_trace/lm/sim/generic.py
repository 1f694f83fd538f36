"""Generic reflection: how ``gepa-sim/reflect`` edits prompts of agents other than the demo.

SIMULATED. This is not a language model; it is a small deterministic reader that lets a
user try the whole optimize loop offline on their own agent and see prompts change. A
real reflection LM does far better. ``gepa-sim/reflect`` hands it every reflection
prompt whose instruction is not one of the demo's steps (search query, passage
selection, answering), for instance an instruction that names a closed set of options
("Route the message to one team: billing, shipping, technical, account.").

It reads only the prompt it is sent (the layout of ``gepa_trace.optimizer.reflection``,
or any layout with the instruction in a fenced block and "Example N" sections):

- the current instruction, its options (``task.options_of``) and its keyword rules;
- for each example: the component's input (the user message of its rendered call), its
  output, its score, and the feedback text;
- the expected answer of an example, when the feedback states it: "expected
  'billing'", "expected: billing", "correct answer: billing", "the answer should be
  billing", "should have been billing" (an option named right after the phrase wins);
  an example scored 1 confirms its own output.

From that it writes rules the simulated task model understands:

- a keyword rule for a misrouted example, "If the message mentions 'parcel', answer
  shipping.", built from a distinctive word of its input: the word found in the most
  inputs with the same expected answer and in none with another, and above all a word
  of the input that the feedback itself uses ("refunds go to billing"); common English
  words, words of the instruction and keywords already ruled are never chosen; ties are
  broken with the rng, so an unlucky pick is a word that does not generalise;
- a format rule, "Answer with only the team name, nothing else.", when outputs hold the
  expected answer inside a sentence or the feedback asks for shorter answers ("too
  long", "only the team name", "one word", "full sentence").

It keeps the current instruction and its rules, adds one or two rules (the most frequent
failures first), and replies like ``gepa-sim/reflect``: "Diagnosis: ..." then the
complete new instruction in one fenced block. The same prompt always gets the same
reply.

It is imperfect on purpose:

| flaw      | rate         | what it does                                                    |
|-----------|--------------|-----------------------------------------------------------------|
| useless   | 0.15         | adds a vague rule the task model ignores ("Read the whole message before you decide.") |
| bad word  | when tied    | picks a keyword that does not generalise (a word of one input only) |
| no answer | -            | feedback that states no expected answer ("wrong team") teaches nothing but a vague rule |

Minibatch acceptance is what keeps the useless edits out.
"""

from __future__ import annotations

import random
import re

from gepa_trace.lm.sim.quoted import unquote
from gepa_trace.lm.sim.reflect import (
    current_instruction,
    examples_of,
    feedback_of,
    insert_rules,
    keep_reply,
    kept,
)
from gepa_trace.lm.sim.task import keyword_rules, label_only, options_of

USELESS_RATE = 0.15
MAX_NEW_RULES = 2

USELESS_RULES = [
    "Read the whole message before you decide.",
    "Be careful and consistent.",
    "Think about what the customer really needs.",
]

KEYWORD_PHRASINGS = [
    "If the message mentions '{word}', answer {label}.",
    "When the message contains '{word}', answer {label}.",
    "If the message mentions '{word}', route it to {label}.",
]
FORMAT_RULE = "Answer with only the {noun} name, nothing else."

_FORMAT_FEEDBACK = re.compile(
    r"too long|too verbose|verbose|shorter|only the|just the|one word|single word|"
    r"full sentence|complete sentence|extra words|no sentence|not a sentence", re.IGNORECASE)
_EXPECTED_CUE = re.compile(
    r"(?:expected(?: answer| value)?|correct(?: answer| value)?|right answer|"
    r"(?:should|would) (?:have )?be(?:en)?|correction)\b\s*(?:is|was|:|=)?\s*", re.IGNORECASE)
_SECTION = re.compile(
    r"(?im)^[ \t]*(?:#{1,6}[ \t]*(?P<head>[^\n]*)|(?P<label>inputs?|outputs?|generated outputs?|"
    r"response|score|feedback|rendered inputs?)[ \t]*:[ \t]*(?P<rest>[^\n]*))$\n?")
_WORD = re.compile(r"[a-z][a-z'-]*[a-z]")

#: Common English words a reader never takes for a topic (not task knowledge).
_COMMON_WORDS = """
a about above after again against all also am an and any are as at be because been before
being below between both but by can cannot could did do does doing done down during each
even ever every few for from further get gets got had has have having he her here hers him
his how i if in into is it its itself just know let like me more most much my myself need
needs no nor not now of off on once one only or other our ours out over own please same
she should since so some still such than thank thanks that the their them then there these
they this those through to too under until up us very was we were what when where which
while who whom why will with would yet you your yours hello hi hey dear help
never always often sometimes anymore ever good morning evening afternoon yesterday today tomorrow week weeks day days time again already really able want wanted
tried trying try get getting keeps keep something anything nothing someone anyone thing
things there's it's i'm i've can't don't doesn't didn't won't isn't wasn't
"""
COMMON = frozenset(_COMMON_WORDS.split())


def reply(messages: list[dict[str, str]], rng: random.Random) -> str:
    """A diagnosis, then the complete new instruction in one fenced block."""
    prompt = unquote("\n\n".join(m.get("content") or "" for m in messages
                                  if m.get("role") != "assistant"))
    instruction, after = current_instruction(prompt)
    if not instruction.strip():
        instruction = "Complete the task described in the examples."
    noun, options = options_of(instruction)
    examples = [_read(e, options) for e in examples_of(prompt[after:])]
    examples = [e for e in examples if e["input"] or e["feedback"]]
    total = max(len(examples), 1)

    ruled = {w for words, _label in keyword_rules(instruction) for w in words}
    short = label_only(instruction)
    routing = [e for e in examples if e["expected"] and not _same(e["output"], e["expected"])
               and not _holds(e["output"], e["expected"])]
    formatting = [e for e in examples if not short and (
        (e["expected"] and _holds(e["output"], e["expected"]))
        or (_FORMAT_FEEDBACK.search(e["feedback"]) and not _same(e["output"], e["expected"] or "")))]

    proposals: list[tuple[int, str, str]] = []  # (examples behind it, rule, diagnosis)
    if options:
        by_label: dict[str, list[dict]] = {}
        for e in routing:
            by_label.setdefault(e["expected"], []).append(e)
        for label in sorted(by_label, key=lambda lab: (-len(by_label[lab]), lab)):
            word = _keyword(by_label[label], examples, label, options, ruled | _words(instruction),
                            rng)
            if word is None:
                continue
            ruled.add(word)
            rule = rng.choice(KEYWORD_PHRASINGS).format(word=word, label=label)
            quote = _quote(by_label[label][0]["feedback"])
            proposals.append((len(by_label[label]),
                              rule, (f"in {len(by_label[label])} of {total} examples the "
                                     f"{noun} should have been {label}, and those messages "
                                     f"mention '{word}' (feedback: \"{quote}\")")))
    if formatting:
        rule = (FORMAT_RULE.format(noun=noun) if noun and noun != "answer"
                else "Answer with only the label, nothing else.")
        proposals.append((len(formatting), rule,
                          (f"in {len(formatting)} of {total} examples the output is longer "
                           "than the expected answer (feedback: "
                           f"\"{_quote(formatting[0]['feedback'])}\")")))
    proposals.sort(key=lambda p: -p[0])
    proposals = proposals[:MAX_NEW_RULES]

    roll = rng.random()
    if not proposals:
        keep, roll = kept(roll, prompt)
        if keep:
            return keep_reply(f"Nothing in these {total} examples points to this step.",
                              instruction)
    if proposals and roll >= USELESS_RATE:
        rules = [p[1] for p in proposals]
        found = "; ".join(p[2] for p in proposals)
        diagnosis = ("Diagnosis: " + found[:1].upper() + found[1:]
                     + ". I keep the existing rules and add: " + " ".join(rules))
    else:
        rules = [rng.choice(USELESS_RULES)]
        vague = sum(1 for e in examples if e["feedback"] and not e["expected"])
        if not routing and not formatting and not vague:
            diagnosis = (f"Diagnosis: The {total} outputs look right to me; I only ask for "
                         "more care: " + rules[0])
        else:
            diagnosis = (f"Diagnosis: Some of the {total} outputs were judged wrong"
                         + (f" ({vague} without saying what the right answer was)"
                            if vague else "")
                         + "; the cause is not clear to me. I ask for more care: " + rules[0])
    return (diagnosis + "\n\nNew instruction:\n```\n" + insert_rules(instruction, rules).strip()
            + "\n```\n")


# -- reading one example ---------------------------------------------------------------
def _sections(example: str) -> dict[str, str]:
    """Sections of an example by their lowercased first word: ``## Head`` headings, or
    ``Label: text`` lines (inputs, output(s), score, feedback, response)."""
    heads = list(_SECTION.finditer(example))
    out: dict[str, str] = {}
    for m, nxt in zip(heads, heads[1:] + [None]):
        head = (m.group("head") or m.group("label") or "").strip().lower()
        key = (head.split() or [""])[0]
        key = {"outputs": "output", "generated": "output", "response": "output",
               "input": "inputs", "rendered": "inputs", "agent": "inputs"}.get(key, key)
        body = (m.group("rest") or "") + "\n" + example[m.end():nxt.start() if nxt
                                                           else len(example)]
        body = re.split(r"(?m)^\s*```", body)[0].strip()  # the examples' block ends there
        out.setdefault(key, body)
    return out


def _read(example: str, options: list[str]) -> dict:
    parts = _sections(example)
    inputs = parts.get("inputs", "")
    user = re.search(r"(?im)^\s*(?:\[user\]|\[human\]|user:|human:)", inputs)
    if user:  # a rendered call: the message is the user part
        inputs = inputs[user.end():]
    output = parts.get("output", "").strip()
    feedback = parts.get("feedback") or feedback_of(example)
    score = re.match(r"\s*(-?[\d.]+)", parts.get("score", ""))
    expected = expected_in(feedback, options)
    if expected is None and score and _float(score.group(1)) >= 1 and _label(output, options):
        expected = _label(output, options)  # a correct output confirms itself
    return {"input": inputs.strip(), "output": output, "feedback": feedback.strip(),
            "expected": expected}


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def expected_in(feedback: str, options: list[str]) -> str | None:
    """The expected answer the feedback states, else None (see the module docstring)."""
    for m in _EXPECTED_CUE.finditer(feedback):
        rest = feedback[m.end():m.end() + 60]
        if options:
            found = sorted((hit.start(), o) for o in options
                           for hit in [re.search(r"(?<![a-z])" + re.escape(o.lower()) + r"(?![a-z])",
                                                 rest.lower())] if hit)
            if found and found[0][0] < 25:
                return found[0][1]
            continue
        quoted = re.match(r"['\"‘“]([^'\"’”]{1,60})['\"’”]", rest)
        if quoted:
            return quoted.group(1).strip()
        bare = re.match(r"([\w-]+(?: [\w-]+){0,2}?)(?=[,.;)\n]|$| got| but| not)", rest)
        if bare and bare.group(1).lower() not in {"the", "a", "an", "answer"}:
            return bare.group(1).strip()
    return None


def _label(output: str, options: list[str]) -> str | None:
    text = _norm(output)
    return next((o for o in options if _norm(o) == text), None)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())


def _same(output: str, expected: str) -> bool:
    return _norm(output) == _norm(expected)


def _holds(output: str, expected: str) -> bool:
    """The output says the expected answer, but with more words around it."""
    out, exp = _norm(output), _norm(expected)
    return bool(exp) and out != exp and re.search(rf"\b{re.escape(exp)}\b", out) is not None


# -- choosing a keyword ----------------------------------------------------------------
def _stem(word: str) -> str:
    if word.endswith("es") and word[:-2].endswith(("sh", "ch", "x", "ss")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 4:
        return word[:-1]
    return word


def _words(text: str) -> set[str]:
    return {_stem(w.strip("'-")) for w in _WORD.findall(text.lower())}


def _keyword(failing: list[dict], examples: list[dict], label: str, options: list[str],
             taken: set[str], rng: random.Random) -> str | None:
    """The most distinctive word of the failing inputs for ``label`` (None if none)."""
    banned = taken | COMMON | {_stem(o.lower()) for o in options}
    candidates = {w for e in failing for w in _words(e["input"])
                  if len(w) >= 4 and w not in banned and not w.isdigit()}
    if not candidates:
        return None
    known = [e for e in examples if e["expected"]]

    said = set().union(*(_words(e["feedback"]) for e in failing))

    def merit(word: str) -> int:
        same = sum(1 for e in known if e["expected"] == label and word in _words(e["input"]))
        other = sum(1 for e in known if e["expected"] != label and word in _words(e["input"]))
        return same - 3 * other + 2 * (word in said)

    best = max(merit(w) for w in candidates)
    if best <= 0:
        return None
    return rng.choice(sorted(w for w in candidates if merit(w) == best))


def _quote(feedback: str) -> str:
    line = next((ln.strip() for ln in feedback.splitlines() if ln.strip()), "")
    return " ".join(line.replace("`", "'").split())[:160]
