"""What several feedback records on one run mean together: the one rule.

Every reader of feedback (examples, the built-in ``feedback`` metric, ``traces``) asks
``verdict(records, output)``, or, for many runs, the ``verdicts(weights)`` it returns;
nothing else combines records. The rule:

1. Only records in effect count: a record replaced by a later one (``--replace``) is
   kept in the store but not used. Records on one span of the run (``span_id`` set) are
   evidence (their comments are shown), not a verdict on the run's output.
2. The run's score is the mean of its records' scores, each mapped onto 0..1 by the
   range declared with it (0..1 unless given), weighted by the record's source:
   ``DEFAULT_SOURCE_WEIGHTS`` (reviewer 2, automated 1, user 1) unless the caller gives
   others (``optimize``/``examples --source-weight reviewer=3``). A source of weight 0
   is ignored entirely: its records are evidence only (comments and labels shown),
   never part of the score or the source of an expected answer. A record of no known
   source counts as a user's. No score: ``None``.
3. The expected answer comes from explicit corrections (``expected``). When several
   records give one, the most trusted source wins (reviewer, then automated, then
   user); within that source, the value most records give, if more than half of them
   give it; otherwise there is none, and ``conflict`` says why. The newest record does
   not win by being newest: replacing is the user's explicit act.
4. With no explicit correction, a comment that is exactly one of a few correction
   phrasings gives it, by the same ranking (``correction_in``: "Correct answer: Paris",
   "the answer should be Paris", "the right answer is Paris", "expected: Paris").
   No other comment is ever read as an answer: "the answer is wrong" and "this should
   be shorter" give none. Comments stay evidence for the reflection LM and the judge.
5. With no correction at all, a run whose score is above 0.5 had its recorded output
   approved: that output is the expected answer (``expected_from="approved output"``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

from gepa_trace.errors import ConfigError

SOURCES = ("user", "reviewer", "automated")
#: Other names accepted for a source (stored as the canonical one).
SOURCE_ALIASES = {"human": "user", "end_user": "user", "end-user": "user", "enduser": "user",
                  "customer": "user", "annotator": "reviewer", "expert": "reviewer",
                  "labeler": "reviewer", "auto": "automated", "check": "automated",
                  "automated_check": "automated", "automated-check": "automated",
                  "llm-judge": "automated", "llm_judge": "automated", "judge": "automated",
                  "heuristic": "automated", "test": "automated"}
#: How much a source's correction is trusted over another's.
RANK = {"reviewer": 3, "automated": 2, "user": 1}
#: How much one record of each source counts in a run's score (rule 2).
DEFAULT_SOURCE_WEIGHTS: Mapping[str, float] = {"reviewer": 2.0, "automated": 1.0, "user": 1.0}


def canonical_source(value: Any) -> str | None:
    """``user`` | ``reviewer`` | ``automated`` for a source name or alias, else None."""
    if type(value) is str and value in RANK:  # already canonical: most stored records
        return value
    text = str(value or "").strip().lower()
    if text in SOURCES:
        return text
    return SOURCE_ALIASES.get(text)


_LEAD = r"(?:(?:no|nope|wrong|incorrect|not quite|actually)\s*[,:!-]?\s*)?"
_PHRASES = [
    re.compile(_LEAD + r"(?:the\s+)?(?:correct|right|expected)\s+answer\s*(?:is|was|would be|:)"
               r"\s*:?\s*(?P<answer>.+)$", re.IGNORECASE),
    re.compile(_LEAD + r"(?:the\s+)?answer\s+should\s+(?:have\s+been|be)\s*:?\s*(?P<answer>.+)$",
               re.IGNORECASE),
    re.compile(_LEAD + r"expected\s*:\s*(?P<answer>.+)$", re.IGNORECASE),
]
# Every phrasing holds one of these words (matched as the phrasings match them): most
# comments hold neither and are settled without splitting them into sentences.
_PHRASE_WORD = re.compile(r"answer|expected", re.IGNORECASE)
_SENTENCES = re.compile(r"(?<=[.!?;])\s+|\n+")


def correction_in(comment: str | None) -> str | None:
    """The answer a comment states in one of the recognised correction phrasings (a
    whole sentence of the comment, optionally after "no," or "wrong,"), else None.

    >>> correction_in("Correct answer: Paris")
    'Paris'
    >>> correction_in("the answer is wrong") is None and correction_in("this should be shorter") is None
    True
    """
    if not comment or not _PHRASE_WORD.search(comment):
        return None
    for sentence in _SENTENCES.split(comment.strip()):
        for phrase in _PHRASES:
            m = phrase.match(sentence.strip())
            if not m:
                continue
            answer = re.split(r",?\s+(?:not|instead|rather)\b", m.group("answer"))[0]
            answer = answer.strip().rstrip(".!?;,").strip().strip("\"'“”‘’`").strip()
            if answer and len(answer) <= 200:
                return answer
    return None


def _get(record: Any, key: str) -> Any:
    if isinstance(record, dict):  # the common case, without the slower ABC check
        return record.get(key)
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)


def source_weights(given: Mapping[str, float] | None = None) -> dict[str, float]:
    """``DEFAULT_SOURCE_WEIGHTS`` with ``given`` on top (source names or aliases).
    Raises ``ConfigError`` for an unknown source or a weight that is not a finite
    number >= 0."""
    weights = dict(DEFAULT_SOURCE_WEIGHTS)
    for name, value in (given or {}).items():
        source = canonical_source(name)
        if source is None:
            raise ConfigError(f"source weight {name!r}: unknown source; use one of "
                              f"{', '.join(SOURCES)}")
        try:
            weight = float(value)
        except (TypeError, ValueError):
            weight = float("nan")
        if not (weight >= 0 and weight != float("inf")):
            raise ConfigError(f"source weight {name}={value!r}: must be a number >= 0")
        weights[source] = weight
    return weights


_DEFAULT_WEIGHTS = source_weights()


def normalized_score(record: Any) -> float | None:
    """A record's score on 0..1 by its declared range (None without a score)."""
    return _normalized(_get(record, "score"), _get(record, "score_low"),
                       _get(record, "score_high"))


def _normalized(score: Any, low: Any, high: Any) -> float | None:
    if score is None:
        return None
    low = 0.0 if low is None else float(low)
    high = 1.0 if high is None else float(high)
    return (float(score) - low) / (high - low) if high > low else None


def _norm(text: Any) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", str(text).lower()).split())


@dataclass(frozen=True)
class Verdict:
    """What a run's feedback says. ``expected_from``: ``correction`` (an explicit
    ``expected`` field), ``comment`` (a recognised correction phrasing), ``approved
    output`` (the recorded output, approved by the score), or None. ``expected_record``
    is the feedback id it came from, ``expected_text`` the text it was read from."""

    score: float | None = None
    expected: Any = None
    expected_field: str | None = None
    expected_from: str | None = None
    expected_record: int | None = None
    expected_text: str | None = None
    conflict: str | None = None
    records: int = 0
    comments: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        # asdict's copy without its walk of every field (example loading makes one a
        # run); a Verdict's __dict__ holds its fields, in their order, and nothing else
        data = dict(self.__dict__)
        expected = self.expected
        data.update(expected=expected if type(expected) in _ATOMIC else deepcopy(expected),
                    comments=list(self.comments), labels=list(self.labels))
        return data


_VERDICT_DEFAULTS = {f.name: f.default for f in fields(Verdict)}
_ATOMIC = frozenset({str, int, float, bool, type(None)})  # deepcopy returns these as they are


def _made(base: dict[str, Any], **more: Any) -> Verdict:
    """``Verdict(**base, **more)`` without the frozen dataclass's ``__init__``, which
    sets each field through ``object.__setattr__`` (half the cost of a verdict at
    example loading's volume). The same fields, in the same order; Verdict has no
    ``__post_init__`` to skip."""
    made = object.__new__(Verdict)
    made.__dict__.update(_VERDICT_DEFAULTS, **base, **more)
    return made


def _pick(corrections: list[tuple[Any, str, str | None]]) -> tuple[Any, str | None]:
    """(record, conflict) among (record, answer, field) corrections, by the rule above."""
    if not corrections:
        return None, None
    best = max(RANK.get(canonical_source(_get(r, "source")) or "user", 1)
               for r, _a, _f in corrections)
    top = [c for c in corrections
           if RANK.get(canonical_source(_get(c[0], "source")) or "user", 1) == best]
    counts: dict[tuple[str, str | None], list] = {}
    for record, answer, field in top:
        counts.setdefault((_norm(answer), field), []).append(record)
    (_key, records), = sorted(counts.items(), key=lambda kv: -len(kv[1]))[:1]
    if len(records) * 2 > len(top):
        return records[-1], None
    answers = sorted({a for _r, a, _f in top})
    return None, (f"{len(top)} corrections from the same source disagree "
                  f"({', '.join(repr(a) for a in answers[:4])})")


def verdict(records: Sequence[Any], output: Any = None,
            weights: Mapping[str, float] | None = None) -> Verdict:
    """The verdict of a run's feedback ``records`` (``Feedback`` objects or their
    dicts, any order) on its recorded ``output``; ``weights``: per-source weights on
    top of ``DEFAULT_SOURCE_WEIGHTS`` (rule 2)."""
    return _verdict(records, output, _DEFAULT_WEIGHTS if weights is None
                    else source_weights(weights))


def verdicts(weights: Mapping[str, float] | None = None
             ) -> Callable[[Sequence[Any], Any], Verdict]:
    """``verdict`` with the source weights checked once: what a reader of many runs
    calls for each (``ConfigError`` here for a bad weight)."""
    resolved = source_weights(weights)

    def verdict_of(records: Sequence[Any], output: Any = None) -> Verdict:
        return _verdict(records, output, resolved)

    return verdict_of


def _verdict(records: Sequence[Any], output: Any, weights: Mapping[str, float]) -> Verdict:
    # One pass reads each field of a record once: example loading asks this of
    # thousands of runs.
    n_live = 0
    comments: list[str] = []
    labels: list[str] = []
    # (record, score on 0..1, comment, expected, expected_field)
    on_run: list[tuple[Any, float | None, Any, Any, Any]] = []
    scored: list[tuple[float, float]] = []  # (score, weight)
    for r in records:
        get = r.get if type(r) is dict else partial(_get, r)
        if get("replaced_by") is not None:
            continue
        n_live += 1
        comment, label = get("comment"), get("label")
        if comment:
            comments.append(str(comment))
        if label:
            labels.append(str(label))
        if get("span_id"):
            continue
        weight = weights.get(canonical_source(get("source")) or "user", 0.0)
        if weight > 0:
            s = _normalized(get("score"), get("score_low"), get("score_high"))
            on_run.append((r, s, comment, get("expected"), get("expected_field")))
            if s is not None:
                scored.append((s, weight))
    score = (sum(s * w for s, w in scored) / sum(w for _s, w in scored)) if scored else None
    base = {"score": score, "records": n_live, "comments": tuple(comments),
            "labels": tuple(labels)}

    explicit = [(r, str(expected), field) for r, _s, _c, expected, field in on_run
                if expected not in (None, "")]
    chosen, conflict = _pick(explicit)
    if chosen is not None:
        return _made(base, expected=str(_get(chosen, "expected")),
                     expected_field=_get(chosen, "expected_field"),
                     expected_from="correction", expected_record=_get(chosen, "id"),
                     expected_text=str(_get(chosen, "expected")))
    if conflict:
        return _made(base, conflict=conflict)
    phrased = [(r, answer, None) for r, _s, comment, _e, _f in on_run
               for answer in [correction_in(comment)] if answer]
    chosen, conflict = _pick(phrased)
    if chosen is not None:
        return _made(base, expected=correction_in(_get(chosen, "comment")),
                     expected_from="comment", expected_record=_get(chosen, "id"),
                     expected_text=str(_get(chosen, "comment")))
    if conflict:
        return _made(base, conflict=conflict)
    if score is not None and score > 0.5 and output is not None:
        approving = next((r for r, s, *_ in reversed(on_run) if (s or 0) > 0.5), None)
        return _made(base, expected=output, expected_from="approved output",
                     expected_record=_get(approving, "id") if approving is not None else None)
    return _made(base)


__all__ = ["DEFAULT_SOURCE_WEIGHTS", "RANK", "SOURCES", "SOURCE_ALIASES", "Verdict",
           "canonical_source", "correction_in", "normalized_score", "source_weights", "verdict",
           "verdicts"]
