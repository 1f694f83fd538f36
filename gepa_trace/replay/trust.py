"""What one end user could push into the examples, reported (never removed).

Two signs that a few people are writing much of what the reflection LM reads:

- a comment repeated verbatim (same words, whatever the case and spacing) on at least
  ``REPEATED_COMMENT_MIN_TRACES`` runs: a campaign or a bot. A stock phrase shorter than
  ``REPEATED_COMMENT_MIN_WORDS`` words ("too long", "wrong") is not one (and runs of
  one input are one example: the same correction on them counts once);
- one end user whose runs are more than a set share of the examples (or of validation,
  where every accepted candidate is scored).

A run's end user is ``Example.meta["user"]`` (``replay.dataset.user_of``); a run with no
known user counts as a user of its own. The minibatches a reflection sees are capped per
user by ``optimizer.sampler.EpochSampler``; this module only says what the data holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: A comment is "repeated" once it is on at least this many runs.
REPEATED_COMMENT_MIN_TRACES = 3
#: Shorter comments are stock phrases, never reported.
REPEATED_COMMENT_MIN_WORDS = 6
#: How much of a repeated comment a report line shows.
SHOWN_CHARS = 80


@dataclass(frozen=True)
class RepeatedComment:
    """A comment on ``len(trace_ids)`` runs (``text``: as first written), from ``users``
    distinct end users (a run of no known user counts as one)."""

    text: str
    trace_ids: tuple[str, ...]
    users: int

    @property
    def traces(self) -> int:
        return len(self.trace_ids)

    def line(self) -> str:
        """The report line: the text cut to ``SHOWN_CHARS``, counts, first trace ids."""
        shown = " ".join(self.text.split())
        shown = shown if len(shown) <= SHOWN_CHARS else shown[:SHOWN_CHARS - 1] + "…"
        first = ", ".join(self.trace_ids[:3]) + (", ..." if self.traces > 3 else "")
        return (f"repeated comment {shown!r}: {self.traces} traces, {self.users} "
                f"user{'s' if self.users != 1 else ''} (traces {first})")

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "traces": self.traces, "users": self.users,
                "trace_ids": list(self.trace_ids)}


@dataclass(frozen=True)
class UserShare:
    """End user ``user`` supplied ``count`` of the ``total`` examples of ``split``
    (``all`` or ``val``)."""

    user: str
    count: int
    total: int
    split: str = "all"

    @property
    def share(self) -> float:
        return self.count / self.total if self.total else 0.0

    def line(self) -> str:
        what = "the examples" if self.split == "all" else "the validation examples"
        return (f"user {self.user} supplied {self.share:.0%} of {what} "
                f"({self.count} of {self.total})")

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "count": self.count, "total": self.total,
                "split": self.split, "share": round(self.share, 4)}


def _user_key(example: Any) -> str:
    user = (example.meta or {}).get("user")
    return f"user:{user}" if user is not None else f"run:{example.id}"


def _comments(example: Any) -> list[str]:
    """The comments of the run's feedback records in effect (its verdict's)."""
    verdict = (example.meta or {}).get("verdict") or {}
    if "comments" in verdict:
        return [str(c) for c in verdict["comments"]]
    return [str(f.get("comment")) for f in example.feedback
            if f.get("comment") and f.get("replaced_by") is None]


def repeated_comments(examples: Sequence[Any],
                      min_traces: int = REPEATED_COMMENT_MIN_TRACES) -> list[RepeatedComment]:
    """Comments of at least ``REPEATED_COMMENT_MIN_WORDS`` words on at least
    ``min_traces`` of ``examples``' runs, compared with case and whitespace normalised;
    most traces first, then fewest users, then text."""
    seen: dict[str, tuple[str, list[str], set[str]]] = {}
    for example in examples:
        for comment in _comments(example):
            key = " ".join(comment.lower().split())
            if len(key.split()) < REPEATED_COMMENT_MIN_WORDS:
                continue
            _first, traces, users = seen.setdefault(key, (comment, [], set()))
            trace = example.trace_id or example.id
            if trace not in traces:
                traces.append(trace)
                users.add(_user_key(example))
    found = [RepeatedComment(text, tuple(traces), len(users))
             for text, traces, users in seen.values() if len(traces) >= min_traces]
    return sorted(found, key=lambda r: (-r.traces, r.users, r.text))


def user_shares(examples: Sequence[Any], val: Sequence[Any],
                share: float) -> list[UserShare]:
    """Known end users whose runs are more than ``share`` of ``examples``, then those
    more than ``share`` of ``val``; largest first. One run is never reported (a
    validation set of three is not dominated by one user's one run)."""
    out: list[UserShare] = []
    for split, group in (("all", examples), ("val", val)):
        counts: dict[str, int] = {}
        for example in group:
            user = (example.meta or {}).get("user")
            if user is not None:
                counts[str(user)] = counts.get(str(user), 0) + 1
        out += sorted((UserShare(user, n, len(group), split) for user, n in counts.items()
                       if n > 1 and n > share * len(group)), key=lambda u: (-u.count, u.user))
    return out
