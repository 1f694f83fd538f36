"""Pulling the answer out of a reply's ``` fenced block.

LLMs asked for "the new instruction in a fenced block" answer in many shapes: a language
tag on the fence (```text), prose before and after, several blocks, a block nested inside
the answer's block (an output format shown as ```json inside the new instruction), a
reply cut off before its closing fence, or the fence on the same line as the prose.
``extract_fenced`` returns the content of the block that is the answer, or None when
there is no usable block.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^[ \t]{0,3}(`{3,})[ \t]*([^`\s]*)[^`]*$")
_LANG = re.compile(r"^[A-Za-z0-9_+#.-]{1,20}$")


def _blocks(lines: list[str]) -> list[tuple[str, bool]]:
    """Top-level fenced blocks as (content, closed), in order.

    A bare fence closes the innermost open block if it is at least as long as that
    block's opening fence (CommonMark); a fence with an info string (```json) inside an
    open block opens a nested block, because models nest blocks with the same three
    backticks, and the nested one belongs to the outer block's content.
    """
    blocks: list[tuple[str, bool]] = []
    stack: list[int] = []
    start = 0
    for i, line in enumerate(lines):
        match = _FENCE.match(line)
        if match is None:
            continue
        ticks, info = len(match.group(1)), match.group(2)
        if not stack:
            stack.append(ticks)
            start = i + 1
        elif not info and ticks >= stack[-1]:
            stack.pop()
            if not stack:
                blocks.append(("\n".join(lines[start:i]), True))
        else:
            stack.append(ticks)
    if stack:
        blocks.append(("\n".join(lines[start:]), False))
    return blocks


def _inline(text: str) -> str | None:
    """Fallback for fences that are not on lines of their own: from the first ``` to the
    last (or the end, when there is only one), minus a leading language tag."""
    first = text.find("```")
    if first < 0:
        return None
    last = text.rfind("```")
    body = text[first + 3: last if last > first else len(text)]
    head, newline, rest = body.partition("\n")
    if newline and _LANG.match(head.strip() or "-"):
        body = rest
    body = body.strip("`").strip()
    return body or None


def extract_fenced(text: str | None) -> str | None:
    """The content of the reply's answer block, stripped; None if it has no usable block.

    Rules, in order: the last top-level block with non-blank content (a block missing its
    closing fence runs to the end of the reply); nested blocks stay inside their outer
    block; if no fence stands on its own line, the text between the first and the last
    ``` (or after the only one). Blank blocks are not answers.
    """
    if not text or "```" not in text:
        return None
    lines = text.replace("\r\n", "\n").split("\n")
    for content, _closed in reversed(_blocks(lines)):
        if content.strip():
            return content.strip("\n").strip()
    return _inline(text)
