"""Seed-to-best prompt diffs as HTML: side by side, line blocks aligned by difflib, and
inside a changed block the words that changed marked (prompts are often one long
paragraph, where a line diff would only say "everything changed").

All text is HTML-escaped here; the result is safe to place in the page as is.
"""

from __future__ import annotations

import difflib
import html
import re

_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _wrap(tag: str, text: str) -> str:
    """``text`` in ``tag``, closed at every newline, so the caller can split it into
    table rows without cutting a tag in two."""
    return "\n".join(f"<{tag}>{part}</{tag}>" if part else "" for part in text.split("\n"))


def _words(old: str, new: str) -> tuple[str, str]:
    """Both texts with the removed (left) and added (right) tokens wrapped."""
    a, b = _TOKEN.findall(old), _TOKEN.findall(new)
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        old_part, new_part = _esc("".join(a[i1:i2])), _esc("".join(b[j1:j2]))
        if op == "equal":
            left.append(old_part)
            right.append(new_part)
            continue
        if old_part:
            left.append(_wrap("del", old_part))
        if new_part:
            right.append(_wrap("ins", new_part))
    return "".join(left), "".join(right)


def _row(kind: str, left_no: str, left: str, right_no: str, right: str) -> str:
    return (f'<tr class="{kind}"><td class="ln">{left_no}</td><td class="l">{left}</td>'
            f'<td class="ln">{right_no}</td><td class="r">{right}</td></tr>')


def side_by_side(old: str, new: str, old_label: str, new_label: str) -> str:
    """An HTML table: the old text on the left, the new on the right, changes coloured."""
    a, b = old.splitlines(), new.splitlines()
    rows = []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            for k in range(i2 - i1):
                rows.append(_row("eq", str(i1 + k + 1), _esc(a[i1 + k]), str(j1 + k + 1),
                                 _esc(b[j1 + k])))
        elif op == "replace":
            # Pair the block's lines as a whole so moved words inside a paragraph show.
            left, right = _words("\n".join(a[i1:i2]), "\n".join(b[j1:j2]))
            left_lines, right_lines = left.split("\n"), right.split("\n")
            for k in range(max(len(left_lines), len(right_lines))):
                has_l, has_r = k < len(left_lines), k < len(right_lines)
                rows.append(_row("chg", str(i1 + k + 1) if has_l else "",
                                 left_lines[k] if has_l else "",
                                 str(j1 + k + 1) if has_r else "",
                                 right_lines[k] if has_r else ""))
        elif op == "delete":
            for k in range(i2 - i1):
                rows.append(_row("del", str(i1 + k + 1), f"<del>{_esc(a[i1 + k])}</del>",
                                 "", ""))
        else:  # insert
            for k in range(j2 - j1):
                rows.append(_row("ins", "", "", str(j1 + k + 1),
                                 f"<ins>{_esc(b[j1 + k])}</ins>"))
    head = (f'<thead><tr><th colspan="2">{_esc(old_label)}</th>'
            f'<th colspan="2">{_esc(new_label)}</th></tr></thead>')
    # Column widths come from a colgroup: with a fixed layout the header's colspans
    # would otherwise split the width evenly, line-number columns included.
    cols = ('<colgroup><col class="ln"><col class="txt"><col class="ln"><col class="txt">'
            '</colgroup>')
    return f'<table class="diff">{cols}{head}<tbody>{"".join(rows)}</tbody></table>'


def change_summary(old: str, new: str) -> str:
    """A short plain-text summary: characters before and after, words added/removed."""
    a, b = old.split(), new.split()
    added = removed = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            removed += i2 - i1
        if op in ("replace", "insert"):
            added += j2 - j1
    return f"{len(old)} → {len(new)} characters, +{added} / −{removed} words"
