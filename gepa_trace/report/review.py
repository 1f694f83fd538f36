"""How the review's flagged changes are shown: the report's "Flagged changes" section and
the lines `gepa-trace runs show` prints.

A fragment usually appears in many candidates (a child keeps its parent's lines), so
flags are grouped by component, kind and text, each group with its candidates and its
evidence. URLs and addresses are shown defanged (``hxxp[:]//evil[.]example``): the
report has no link, and a person reading it should not click one by accident.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gepa_trace.prompts.review import Flag, RunReview
from gepa_trace.report.svg import esc

_SHOWN_CANDIDATES = 6


@dataclass(frozen=True)
class FlagGroup:
    """One flagged fragment of one component, with every candidate that carries it."""

    component: str
    kind: str
    text: str
    candidates: tuple[int, ...]
    best: bool
    first: Flag  # its line and evidence (the same fragment has the same evidence)


def flag_groups(review: RunReview) -> list[FlagGroup]:
    """Flags grouped by (component, kind, text); the best candidate's first."""
    groups: dict[tuple[str, str, str], list[Flag]] = {}
    for f in review.flags:
        groups.setdefault((f.component, f.kind, f.text), []).append(f)
    out = [FlagGroup(c, k, t, tuple(sorted({f.candidate_id for f in flags})),
                     any(f.candidate_id == review.best_candidate_id for f in flags), flags[0])
           for (c, k, t), flags in groups.items()]
    return sorted(out, key=lambda g: (not g.best, g.component, g.kind, g.text))


def defang(text: str) -> str:
    """``http://evil.example`` -> ``hxxp[:]//evil[.]example`` (and so for www. hosts and
    e-mail domains): readable, not a link."""
    text = re.sub(r"(?i)\b(h)tt(ps?)://", r"\1xx\2[:]//", text)
    text = re.sub(r"(?i)\bftp://", "fxp[:]//", text)
    return re.sub(r"(?i)(?<=[a-z0-9-])\.(?=(?:[a-z0-9-]+\.)*[a-z]{2,}\b)",
                  "[.]", text) if re.search(r"\[:\]//|@|www\.", text) else text


def _candidates(ids: tuple[int, ...], best: int | None) -> str:
    shown = ", ".join(f"{i}{' (best)' if i == best else ''}" for i in ids[:_SHOWN_CANDIDATES])
    more = f", +{len(ids) - _SHOWN_CANDIDATES}" if len(ids) > _SHOWN_CANDIDATES else ""
    return shown + more


def review_lines(review: RunReview) -> list[str]:
    """What `gepa-trace runs show` prints about the review."""
    if not review.flags:
        return ["review: no flagged changes"]
    best = review.best_flags
    head = (f"review: the best candidate ({review.best_candidate_id}) is flagged: "
            f"{len(best)} change{'s' if len(best) != 1 else ''} need --approve to export"
            if best else "review: the best candidate is not flagged")
    lines = [head, (f"flagged changes ({len(review.flags)} flags in "
             f"{len({f.candidate_id for f in review.flags})} candidates):")]
    for g in flag_groups(review):
        text = g.text if len(g.text) <= 80 else g.text[:77] + "..."
        lines.append(f"  {g.kind:<19} {g.component:<18} {text!r}")
        lines.append(f"      candidates {_candidates(g.candidates, review.best_candidate_id)}"
                     f"; {g.first.evidence()}"
                     + (f"; feedback {', '.join(map(str, g.first.feedback_ids[:5]))}"
                        if g.first.feedback_ids else "")
                     + (f"; {g.first.users} users" if g.first.users is not None else ""))
    return lines


def review_section_body(review: RunReview | None) -> tuple[str, str]:
    """(body, note) of the report's "Flagged changes" section."""
    if review is None:
        return "<p>The review could not be read.</p>", ""
    if not review.flags:
        return (("<p>No proposed change was flagged: no new URL, address, phone number, code,"
                " markup, instruction about prompts, or text copied from a few traces.</p>"),
                "")
    rows = []
    for g in flag_groups(review):
        f = g.first
        traces = ", ".join(esc(t) for t in f.trace_ids[:5])
        more = f" (+{len(f.trace_ids) - 5})" if len(f.trace_ids) > 5 else ""
        feedback = ", ".join(str(i) for i in f.feedback_ids[:5]) or "—"
        users = "—" if f.users is None else str(f.users)
        badge = '<span class="badge no">best</span> ' if g.best else ""
        rows.append(
            f"<tr><td>{badge}<span class=\"mono\">{esc(g.component)}</span></td>"
            f"<td>{esc(g.kind)}</td><td><b>{esc(defang(g.text))}</b>"
            f"<div class=\"muted\">{esc(defang(f.line))}</div></td>"
            f"<td>{esc(_candidates(g.candidates, review.best_candidate_id))}</td>"
            f"<td class=\"mono\">{traces or '—'}{esc(more)}</td>"
            f"<td>{esc(feedback)}</td><td>{esc(users)}</td></tr>")
    table = ("<div class=\"scroll\"><table><thead><tr><th>component</th><th>kind</th>"
             "<th>text (line)</th><th>candidates</th><th>evidence traces</th>"
             "<th>feedback</th><th>users</th></tr></thead><tbody>" + "".join(rows)
             + "</tbody></table></div>")
    best = review.best_flags
    verdict = (f"<p class=\"verdict no\">The best candidate has {len(best)} flagged "
               "change(s): export needs --approve.</p>" if best else
               "<p class=\"verdict yes\">The best candidate is not flagged.</p>")
    note = ("Changes against the seed that carry a new URL, e-mail address, phone number, "
            "code, markup, an instruction to reveal or ignore prompts, or text copied from "
            "content only a few traces carry. Evidence: the traces and feedback records "
            "whose content holds the text.")
    return verdict + table, esc(note)
