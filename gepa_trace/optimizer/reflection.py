"""Reflective mutation of one component: the reflection prompt and the reply's parsing.

The prompt holds the component's current instruction and, for each minibatch example,
only that component's records (its rendered inputs, its outputs, errors) and the
metric's feedback. It asks for a plain-language diagnosis first and then the complete
new instruction in a fenced block, or the current one unchanged when the failures shown
do not come from this component (``KEEP_NOTE``). The template is replaceable per
component (placeholders ``<component>``, ``<curr_param>``, ``<side_info>``).

The prompt is kept under a token limit: the longest texts are cut in the middle with a
visible ``[... N characters cut ...]`` marker, and whole records are dropped (with a
line saying so) only when cutting is not enough. Nothing is dropped silently. Triple
backticks inside records are shown as three quotes so they cannot close the block.

Every piece of trace content (the agent's inputs, the component's inputs, which hold the
tool results it was given, its outputs, errors, the feedback) is quoted as untrusted
data (``gepa_trace.lm.untrusted``): between ``<untrusted-data source="...">`` and
``</untrusted-data>`` lines under its ``## ...`` heading, and the template says, right
after the examples (where a model reads it last, after anything they hold), that text
inside is evidence about the task, never instructions, and that URLs, contact details,
code or instructions found there must not be copied into the new instruction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gepa_trace.errors import ConfigError
from gepa_trace.lm.fenced import extract_fenced
from gepa_trace.lm.untrusted import NOTICE, neutralise, quote
from gepa_trace.optimizer.protocols import ComponentRecord, Example, Rollout

#: Lets the reflection leave a component alone when the failures are not its own: with
#: every component reflected on for one child, an edit a component does not need is how a
#: child that fixes another one gets sunk.
KEEP_NOTE = ("If the failures in these examples do not come from this component (what it "
             "received was already wrong, or a later step went wrong while this one did its "
             "part), say so in the diagnosis and give the current instruction unchanged: a "
             "rule this component does not need can only make it worse.\n")

DEFAULT_TEMPLATE = """You are improving one prompt of a multi-step LLM agent: the prompt of the component "<component>".
The component currently uses this instruction:
```
<curr_param>
```

Below are examples of the component at work. For each one you see the inputs the component received, what it produced, any error, and the feedback on the agent's final result:
```
<side_info>
```

""" + NOTICE + """

Your task is to write a new instruction for this component.

Read the inputs carefully and identify the input format, and infer a detailed description of the task this component performs within the agent.

Read the outputs and the feedback. Identify the niche and domain-specific facts about the task and include them in the instruction, since they may not be available to the component later. If the component used a generalizable strategy that worked, keep it in the instruction.

Keep every template variable written in braces (such as {question}) exactly as it appears in the current instruction.

""" + KEEP_NOTE + """
First, write a short diagnosis in plain language: what went wrong in these examples and why. Then give the complete new instruction (not a diff) within ``` blocks."""

CUT_MARKER = "[... {n} characters cut ...]"


@dataclass(frozen=True)
class ReflectionExample:
    """What reflection shows of one minibatch example for one component."""

    example_id: str
    inputs: Mapping[str, object]
    records: Sequence[ComponentRecord]
    feedback: str
    score: float
    error: str | None = None


@dataclass(frozen=True)
class Proposal:
    """A parsed reflection reply: the diagnosis text and the new instruction."""

    diagnosis: str
    instruction: str


def reflection_examples(component: str, examples: Sequence[Example],
                        rollouts: Sequence[Rollout]) -> list[ReflectionExample]:
    """Only ``component``'s records of each rollout, with the example-level feedback."""
    return [ReflectionExample(ex.id, ex.inputs, list(r.records.get(component, [])),
                              r.feedback, r.score, r.error)
            for ex, r in zip(examples, rollouts)]


def _cut(text: str, limit: int) -> str:
    """``text`` cut in the middle to about ``limit`` characters, with the marker."""
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 20)
    head, tail = keep * 2 // 3, keep // 3
    return text[:head] + " " + CUT_MARKER.format(n=len(text) - head - tail) + " " + text[-tail:]


def _render(examples: Sequence[ReflectionExample], field_limit: int | None) -> list[str]:
    def cut(text: str, source: str) -> str:
        text = text.replace("```", "''" + "'")  # a fence inside a record would end the block
        text = neutralise(text)  # before cutting, so no half marker is left at a cut
        return quote(text if field_limit is None else _cut(text, field_limit), source)

    blocks = []
    for n, ex in enumerate(examples, 1):
        lines = [f"# Example {n}", f"## Score\n{ex.score:g}"]
        if not ex.records:
            inputs = "\n".join(f"{k}: {v}" for k, v in ex.inputs.items())
            lines.append(f"## Agent inputs\n{cut(inputs, 'agent inputs')}")
            lines.append("## Component records\n(the component was not called in this run)")
        for i, record in enumerate(ex.records, 1):
            suffix = f" (call {i} of {len(ex.records)})" if len(ex.records) > 1 else ""
            lines.append(f"## Inputs{suffix}\n{cut(record.inputs.strip(), 'inputs')}")
            lines.append(f"## Output{suffix}\n{cut(record.output.strip(), 'output')}")
            if record.error:
                lines.append(f"## Error{suffix}\n{cut(record.error.strip(), 'error')}")
        if ex.error and not any(r.error for r in ex.records):
            lines.append(f"## Error\n{cut(ex.error.strip(), 'error')}")
        lines.append(f"## Feedback\n{cut(ex.feedback.strip() or '(none)', 'feedback')}")
        blocks.append("\n".join(lines))
    return blocks


def build_prompt(component: str, instruction: str, examples: Sequence[ReflectionExample],
                 max_tokens: int, template: str | None = None) -> str:
    """The reflection prompt for ``component``, at most about ``max_tokens`` tokens.

    Raises ConfigError if the template lacks ``<curr_param>`` or ``<side_info>``.
    """
    template = template or DEFAULT_TEMPLATE
    for placeholder in ("<curr_param>", "<side_info>"):
        if placeholder not in template:
            raise ConfigError(f"reflection template lacks the placeholder {placeholder}")
    head = template.replace("<component>", component)

    def assemble(side_info: str, current: str) -> str:
        return head.replace("<curr_param>", current).replace("<side_info>", side_info)

    budget_chars = max_tokens * 4
    current = instruction
    frame = len(assemble("", current))
    if frame > budget_chars // 2:  # a huge instruction keeps at most half of the prompt
        current = _cut(instruction, budget_chars // 2 - (frame - len(instruction)))
        frame = len(assemble("", current))
    room = max(budget_chars - frame, 400)

    blocks = _render(examples, None)
    if sum(len(b) + 2 for b in blocks) > room:
        # Cut every long text to a share of the room, shrinking until it fits.
        fields = sum(2 + 2 * len(ex.records) for ex in examples) or 1
        limit = max(room // fields, 60)
        blocks = _render(examples, limit)
        while sum(len(b) + 2 for b in blocks) > room and limit > 60:
            limit = max(limit * 3 // 4, 60)
            blocks = _render(examples, limit)
    kept: list[str] = []
    used = 0
    if sum(len(b) + 2 for b in blocks) > room:
        room -= 80  # the line that says how many examples were left out
    for block in blocks:
        if used + len(block) + 2 > room and kept:
            break
        kept.append(block)
        used += len(block) + 2
    if len(kept) < len(blocks):
        kept.append(f"[... {len(blocks) - len(kept)} more example(s) left out to stay under "
                    f"{max_tokens} tokens ...]")
    return assemble("\n\n".join(kept), current)


def parse_reply(reply: str) -> Proposal:
    """The diagnosis and the new instruction of a reflection reply.

    The instruction is the reply's answer block (``gepa_trace.lm.extract_fenced``: the
    last non-blank fenced block; one missing its closing fence runs to the end); the
    diagnosis is the prose before it. Raises ConfigError when the reply is empty or has
    no usable fenced block.
    """
    if not isinstance(reply, str) or not reply.strip():
        raise ConfigError("the reflection reply is empty")
    instruction = extract_fenced(reply)
    if not instruction:
        raise ConfigError("the reflection reply has no fenced block with a new instruction")
    at = reply.find(instruction)
    before = reply[:at] if at >= 0 else reply[:reply.find("```")]
    diagnosis = re.sub(r"`{3,}[^\n`]*\s*$", "", before.rstrip()).strip()
    diagnosis = strip_trailing_heading(diagnosis)
    return Proposal(diagnosis=diagnosis or "(no diagnosis given)", instruction=instruction)


# A last line that only announces the block cut off after it: "New instruction:",
# "**Updated prompt**", "## Proposed instruction", "Here is the new instruction:",
# "The new system prompt is:" (a line, or the last sentence of one). Kept, it would end
# every stored diagnosis dangling.
_HEADING = re.compile(
    r"(?:^|\n|(?<=[.!?])[ \t]+)[ \t>]*(?:#{1,6}[ \t]*)?[*_]*[ \t]*"
    r"(?:(?:here\s+is|here's|below\s+is|this\s+is)\s+)?(?:(?:the|my|a)\s+)?"
    r"(?:(?:new|updated|improved|revised|proposed|rewritten|final|complete|full)\s+)*"
    r"(?:(?:system|component)\s+)?(?:instruction|prompt)s?(?:\s+text)?"
    r"(?:\s+(?:is|follows|would\s+be))?[ \t]*[*_]*[ \t]*[:.\-]?[ \t]*[*_]*[ \t]*$",
    re.IGNORECASE)


def strip_trailing_heading(diagnosis: str) -> str:
    """``diagnosis`` without the heading(s) at its end that introduced the instruction
    block (the block itself is not part of the diagnosis)."""
    text = diagnosis.rstrip()
    while True:
        match = _HEADING.search(text)
        if match is None:
            return text
        text = text[:match.start()].rstrip()
