"""What a valid feedback record is: its fields, their checks, and its idempotency key.

Every way in (``record_feedback``, ``feedback add``, ``feedback import``,
``POST /v1/feedback``, a ``gepa.feedback`` span event) checks its values here, so a
record means the same and is refused for the same reasons whichever door it came in by.
The fields and their refusals are the table in the README's feedback section.

The idempotency key (``feedback_key``) is ``id:<feedback_id>`` when the caller names the
record, else ``sha256:<hash of its content>``; the prefixes keep a caller's key from ever
equalling a content hash. The content is everything the record says: trace, span, name,
score and its range (the default 0..1 written out), label, comment, expected,
expected_field, source.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

from gepa_trace.errors import FeedbackError
from gepa_trace.store.verdict import SOURCE_ALIASES, SOURCES, canonical_source

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^\s*\[?\s*({_NUMBER})\s*(?:,|\.\.|-|to)\s*({_NUMBER})\s*\]?\s*$")
# Column widths of the feedback table; longer values would fail on PostgreSQL only.
_MAX_LEN = {"name": 255, "label": 255, "expected_field": 255, "feedback_id": 120}
#: The fields a caller gives (files: also score_low and score_high for score_range).
FIELDS = ("trace_id", "span_id", "name", "score", "score_range", "label", "comment",
          "expected", "expected_field", "source", "feedback_id")
#: What ``checked_feedback`` accepts: the fields, and the range as two columns.
COLUMNS = (*FIELDS, "score_low", "score_high")
DEFAULT_RANGE = (0.0, 1.0)


def _trace_id(value: Any) -> str:
    text = str(value).strip().lower() if value is not None else ""
    if not text:
        raise FeedbackError("no trace_id given")
    if not _TRACE_ID.match(text) or text == "0" * 32:
        raise FeedbackError(f"trace id {value!r} is malformed (expected 32 hex characters)")
    return text


def _span_id(value: Any) -> str | None:
    text = str(value).strip().lower() if value is not None else ""
    if not text:
        return None
    if not _SPAN_ID.match(text) or text == "0" * 16:
        raise FeedbackError(f"span id {value!r} is malformed (expected 16 hex characters)")
    return text


def _number(value: Any, what: str) -> float | None:
    """A finite float, or None. Strings are parsed (files carry text); bools are refused
    because True/False as a score is almost always a column mix-up."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            number = float(value)
        except ValueError:
            raise FeedbackError(f"{what} {value!r} is not a number") from None
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FeedbackError(f"{what} {value!r} is not a number")
    else:
        number = float(value)
    if not math.isfinite(number):
        raise FeedbackError(f"{what} {value!r} is not a finite number")
    return number


def _text(value: Any, column: str) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    limit = _MAX_LEN.get(column)
    if limit is not None and len(text) > limit:
        raise FeedbackError(f"{column} is {len(text)} characters long (at most {limit})")
    return text


def _range(score_range: Any, low: Any, high: Any) -> tuple[float, float] | None:
    """The declared range: ``score_range`` as (low, high), [low, high] or "low,high" /
    "low-high" / "low..high", or the two columns; None when none is declared."""
    if score_range is not None and not (isinstance(score_range, str)
                                        and not score_range.strip()):
        if low is not None or high is not None:
            raise FeedbackError("give either score_range or score_low/score_high, not both")
        if isinstance(score_range, str):
            m = _RANGE.match(score_range)
            if not m:
                raise FeedbackError(f"score range {score_range!r} is not 'low,high' "
                                    "(e.g. 1,5)")
            low, high = m.group(1), m.group(2)
        elif isinstance(score_range, (list, tuple)) and len(score_range) == 2:
            low, high = score_range
        else:
            raise FeedbackError(f"score range {score_range!r} is not [low, high]")
    low, high = _number(low, "score_low"), _number(high, "score_high")
    if low is None and high is None:
        return None
    if low is None or high is None:
        raise FeedbackError("a score range needs both ends (score_low and score_high)")
    if low >= high:
        raise FeedbackError(f"score range {low:g}..{high:g} is empty "
                            "(its low end must be below its high end)")
    return low, high


def _source(value: Any) -> str:
    if value is None or not str(value).strip():
        return "user"
    source = canonical_source(value)
    if source is None:
        raise FeedbackError(f"source {str(value)[:64]!r} is not one of {', '.join(SOURCES)} "
                            f"(aliases: {', '.join(sorted(SOURCE_ALIASES))})")
    return source


def checked_feedback(trace_id: Any, score: Any = None, label: Any = None,
                     comment: Any = None, name: Any = "user", source: Any = "user",
                     span_id: Any = None, expected: Any = None, expected_field: Any = None,
                     score_range: Any = None, feedback_id: Any = None,
                     score_low: Any = None, score_high: Any = None) -> dict[str, Any]:
    """The feedback-table row for these values (``feedback_key`` included), or
    ``FeedbackError`` naming the first problem. Does not look at the store.

    Refused: a malformed trace or span id; a score that is not a finite number, or
    outside its declared range (0..1 unless ``score_range`` says otherwise); a range
    whose low end is not below its high end; a source that is not user | reviewer |
    automated or one of their aliases (stored as the canonical name); an
    ``expected_field`` without ``expected``; a record with no score, label, comment or
    expected answer. A range given without a score is not stored (it bounds nothing).
    """
    row = {"trace_id": _trace_id(trace_id), "span_id": _span_id(span_id),
           "score": _number(score, "score"), "label": _text(label, "label"),
           "comment": _text(comment, "comment"),
           "name": _text(name, "name") or "user", "source": _source(source),
           "expected": _text(expected, "expected"),
           "expected_field": _text(expected_field, "expected_field")}
    declared = _range(score_range, score_low, score_high)
    if row["score"] is not None:
        low, high = declared or DEFAULT_RANGE
        if not low <= row["score"] <= high:
            raise FeedbackError(f"score {row['score']:g} is outside its range {low:g}..{high:g}"
                                "; declare the range with --score-range (score_range "
                                "elsewhere)")
    else:
        declared = None
    row["score_low"], row["score_high"] = declared or (None, None)
    if row["expected_field"] is not None and row["expected"] is None:
        raise FeedbackError(f"expected_field {row['expected_field']!r} is given without "
                            "expected (the right value of that field)")
    if all(row[k] is None for k in ("score", "label", "comment", "expected")):
        raise FeedbackError(f"feedback on trace {row['trace_id']} is empty "
                            "(give a score, a label, a comment or an expected answer)")
    given_id = _text(feedback_id, "feedback_id")
    row["feedback_key"] = f"id:{given_id}" if given_id else content_key(row)
    return row


def _get(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)


def content_of(record: Any) -> list[Any]:
    """What a record says (a row dict or a stored record), with its effective range."""
    score = _get(record, "score")
    low, high = _get(record, "score_low"), _get(record, "score_high")
    if score is not None and low is None and high is None:
        low, high = DEFAULT_RANGE
    number = (lambda v: None if v is None else float(v))
    return [_get(record, "trace_id"), _get(record, "span_id"), _get(record, "name"),
            number(score), number(low) if score is not None else None,
            number(high) if score is not None else None, _get(record, "label"),
            _get(record, "comment"), _get(record, "expected"),
            _get(record, "expected_field"), _get(record, "source")]


def content_key(record: Any) -> str:
    """``sha256:`` and the hash of what the record says (see the module docstring)."""
    text = json.dumps(content_of(record), ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def feedback_id_of(key: str | None) -> str | None:
    """The caller's ``feedback_id`` in a stored key (None for a content hash)."""
    return key[3:] if key and key.startswith("id:") else None


# ---------------------------------------------------------------- span events

EVENT_NAME = "gepa.feedback"
_EVENT_PREFIX = EVENT_NAME + "."
_EVENT_FIELDS = ("score", "score_low", "score_high", "label", "comment", "expected",
                 "expected_field", "source", "name")


def event_feedback(span: Mapping[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
    """The feedback row of one ``gepa.feedback`` event of a span dict, or
    ``FeedbackError``. On a root span (no parent) it is the run's feedback; on any other
    span it is that span's. ``gepa.feedback.id`` is the caller's feedback_id."""
    attributes = event.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise FeedbackError("event attributes are not a mapping")
    values = {k: attributes.get(_EVENT_PREFIX + k) for k in _EVENT_FIELDS}
    for key, value in values.items():
        if isinstance(value, (list, tuple, dict)):
            raise FeedbackError(f"{_EVENT_PREFIX}{key} is not a single value")
    row = checked_feedback(span.get("trace_id"),
                           span_id=span.get("span_id") if span.get("parent_span_id") else None,
                           feedback_id=attributes.get(_EVENT_PREFIX + "id"), **values)
    time_ns = event.get("time_ns")
    row["created_at"] = time_ns / 1e9 if isinstance(time_ns, int) and time_ns > 0 else None
    return row


__all__ = ["COLUMNS", "EVENT_NAME", "FIELDS", "checked_feedback", "content_key",
           "content_of", "event_feedback", "feedback_id_of"]
