"""A small deterministic world for the optimizer tests: real implementations of the
optimizer's protocols, not mocks.

- ``RuleEvaluator`` (an ``Evaluator``): every example needs one rule per component
  (``RULE P3`` in the planner's instruction, ``RULE A1`` in the answerer's). The score is
  the fraction of components whose instruction holds the rule the example needs; the
  feedback names what was missing; each component gets its own records.
- ``RuleReflectionLM`` (a ``str -> str`` reflection LM): reads the reflection prompt —
  the component's name, its current instruction (the first fenced block) and the
  feedback — and adds the rule the feedback asks for most. Deterministically imperfect:
  some edits drop a rule instead, and it can be told to misbehave (malformed replies,
  dropped template variables, LLM errors).

This module also tests the toys themselves, so a broken world cannot make the optimizer
tests pass vacuously.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import Counter

from gepa_trace.errors import LMError
from gepa_trace.lm.sim.quoted import unquote
from gepa_trace.lm.untrusted import NOTICE
from gepa_trace.optimizer import ComponentRecord, Example, Rollout
from gepa_trace.optimizer.reflection import KEEP_NOTE
from gepa_trace.prompts import PromptSet

RULES = {"planner": ["P1", "P2", "P3", "P4"], "answerer": ["A1", "A2", "A3", "A4"]}

SEED = PromptSet({
    "planner": [("system", "You plan the searches for a question.\nRULE P1"),
                ("human", "{question}")],
    "answerer": [("system", "Answer the question {question} from the evidence.")],
}, agent="toy-agent")


def _h(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def make_examples(n: int, prefix: str, split: str) -> list[Example]:
    out = []
    for i in range(n):
        eid = f"{prefix}{i}"
        need = {c: rules[_h(eid, c) % len(rules)] for c, rules in RULES.items()}
        out.append(Example(id=eid, inputs={"question": f"question {eid}?"}, expected=need,
                           split=split))
    return out


def world(n_train: int = 18, n_val: int = 12, n_test: int = 12):
    return (make_examples(n_train, "t", "train"), make_examples(n_val, "v", "val"),
            make_examples(n_test, "x", "test"))


def rules_in(text: str) -> set[str]:
    return set(re.findall(r"RULE (\w+)", text))


class RuleEvaluator:
    """Scores prompts by the rules their instructions hold; counts every call.

    ``fail_ids``: examples on which it raises (a crashing agent); ``latency_s``: a sleep
    that varies by example, so concurrent rollouts finish out of order; ``capacity``: a
    component follows only the last ``capacity`` rules of its instruction, so versions
    trade examples against each other (multi-member Pareto fronts).
    """

    def __init__(self, fail_ids: set[str] = frozenset(), latency_s: float = 0.0,
                 capacity: int | None = None):
        self.capacity = capacity
        self.fail_ids = set(fail_ids)
        self.latency_s = latency_s
        self.calls: Counter = Counter()
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()

    def evaluate(self, prompts, example, context) -> Rollout:
        key = (tuple(sorted(prompts.versions().items())), example.id)
        with self._lock:
            self.calls[key] += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency_s:
                time.sleep(self.latency_s * (1 + _h(example.id, key) % 5))
            if example.id in self.fail_ids:
                raise RuntimeError(f"retriever crashed on {example.id}")
            records, missing = {}, []
            for component, needed in example.expected.items():
                instruction = prompts.instruction(component)
                have = set(re.findall(r"RULE (\w+)", instruction)[-(self.capacity or 99):])
                ok = needed in have and "BAD" not in have
                if not ok:
                    missing.append(f"The {component} should follow rule {needed}.")
                records[component] = [ComponentRecord(
                    component, inputs=f"{instruction}\n\nquestion: {example.inputs['question']}",
                    output=f"applied rules: {' '.join(sorted(have)) or 'none'}")]
            score = 1 - len(missing) / len(example.expected)
            return Rollout(score=score, feedback=" ".join(missing) or "Correct.",
                           output={"rules": sorted(missing)}, records=records,
                           llm_calls=len(records), tokens=10 * len(records))
        finally:
            with self._lock:
                self.in_flight -= 1


class RuleReflectionLM:
    """A deterministic reflection model that reads only the prompt it is sent.

    ``malformed_every``/``drop_variable_every``/``error_every``: the n-th, 2n-th, ...
    call replies without a fenced block / drops the ``{question}`` variable / raises
    LMError.
    """

    def __init__(self, malformed_every: int = 0, drop_variable_every: int = 0,
                 error_every: int = 0):
        self.malformed_every = malformed_every
        self.drop_variable_every = drop_variable_every
        self.error_every = error_every
        self.calls = 0
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.calls += 1
        self.prompts.append(prompt)
        n = self.calls
        if self.error_every and n % self.error_every == 0:
            raise LMError("simulated provider error after retries")
        component = re.search(r'component "(\w+)"', prompt).group(1)
        current = re.search(r"```\n(.*?)\n```", prompt, re.DOTALL).group(1)
        asked = Counter(re.findall(rf"The {component} should follow rule (\w+)", prompt))
        missing = sorted((r for r in asked if f"RULE {r}" not in current),
                         key=lambda r: (-asked[r], r))
        have = sorted(rules_in(current))
        # A harmful edit now and then, drawn from what the prompt says, not from its
        # untrusted-data markers, notice and keep-unchanged note (the toy runs' tests
        # predate them).
        read = unquote(prompt.replace(NOTICE + "\n\n", "").replace(KEEP_NOTE + "\n", ""))
        if missing and _h(read) % 4 == 0 and have:
            new, why = current.replace(f"RULE {have[0]}", "").strip(), "drop a stale rule"
        elif missing:
            new, why = f"{current}\nRULE {missing[0]}", f"it never applies rule {missing[0]}"
        else:
            new, why = f"{current}\nBe careful.", "no clear failure"
        if self.drop_variable_every and n % self.drop_variable_every == 0:
            new = new.replace("{question}", "the question")
        if self.malformed_every and n % self.malformed_every == 0:
            return f"Diagnosis: {why}. The new instruction is: {new}"
        return f"Diagnosis: the {component} fails because {why}.\n\n```\n{new}\n```\n"


# ----------------------------------------------------------------- the toys' own tests

def test_rule_evaluator_scores_by_the_rules_in_the_instructions():
    train, _val, _test = world()
    ex = train[0]
    need = ex.expected
    good = SEED.with_instruction("planner", f"Plan.\nRULE {need['planner']}") \
               .with_instruction("answerer", f"Answer {{question}}.\nRULE {need['answerer']}")
    evaluator = RuleEvaluator()
    assert evaluator.evaluate(good, ex, None).score == 1.0
    bad = good.with_instruction("answerer", "Answer {question}.")
    rollout = evaluator.evaluate(bad, ex, None)
    assert rollout.score == 0.5
    assert f"answerer should follow rule {need['answerer']}" in rollout.feedback
    assert set(rollout.records) == {"planner", "answerer"}


def test_rule_reflection_lm_adds_the_rule_the_feedback_asks_for():
    lm = RuleReflectionLM()
    prompt = ('component "answerer"\n```\nAnswer {question}.\n```\n'
              "The answerer should follow rule A3. The answerer should follow rule A3. "
              "The answerer should follow rule A2. The planner should follow rule P4.")
    replies = {lm(prompt), lm(prompt)}
    assert len(replies) == 1  # a function of its prompt
    reply = replies.pop()
    assert "RULE A3" in reply or "drop" in reply
    assert "RULE P4" not in reply
