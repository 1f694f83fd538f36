"""Recording feedback on traces: one at a time (``record_feedback``) or from a file
(``import_feedback``, CSV or JSONL).

Feedback is what the optimizer later reads as production evidence, so a record that
could not mean anything is refused rather than stored: a malformed or unknown trace id,
a score that is not a finite number, or a record with no score, label or comment.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import numbers
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, tuple_

from gepa_trace.errors import FeedbackError, NotFoundError, StoreMissing
from gepa_trace.store.engine import Store, open_store, safe_url
from gepa_trace.store.queries import Feedback
from gepa_trace.store.tables import FeedbackRow, SpanRow

logger = logging.getLogger(__name__)

_FEEDBACK = FeedbackRow.__table__
_SPANS = SpanRow.__table__

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
# Column widths of the feedback table; longer values would fail on PostgreSQL only.
_MAX_LEN = {"name": 255, "label": 255, "source": 64, "expected_field": 255}
COLUMNS = ("trace_id", "span_id", "score", "label", "comment", "name", "source", "expected",
           "expected_field")


class UnknownTraceError(FeedbackError, NotFoundError):
    """Feedback on a trace (or span) the store has never seen. Exit code 3, like any
    lookup of something that does not exist."""


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


def _score(value: Any) -> float | None:
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
            raise FeedbackError(f"score {value!r} is not a number") from None
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FeedbackError(f"score {value!r} is not a number")
    else:
        number = float(value)
    if not math.isfinite(number):
        raise FeedbackError(f"score {value!r} is not a finite number")
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


def checked_feedback(trace_id: Any, score: Any = None, label: Any = None,
                     comment: Any = None, name: Any = "user", source: Any = "user",
                     span_id: Any = None, expected: Any = None,
                     expected_field: Any = None) -> dict[str, Any]:
    """The feedback-table row for these values, or ``FeedbackError`` naming the first
    problem. Does not look at the store (see ``record_feedback`` for unknown ids)."""
    row = {"trace_id": _trace_id(trace_id), "span_id": _span_id(span_id),
           "score": _score(score), "label": _text(label, "label"),
           "comment": _text(comment, "comment"),
           "name": _text(name, "name") or "user", "source": _text(source, "source") or "user",
           "expected": _text(expected, "expected"),
           "expected_field": _text(expected_field, "expected_field")}
    if all(row[k] is None for k in ("score", "label", "comment", "expected")):
        raise FeedbackError(f"feedback on trace {row['trace_id']} is empty "
                            "(give a score, a label, a comment or an expected answer)")
    return row


def _missing_targets(conn, rows: list[dict[str, Any]]) -> dict[int, str]:
    """For each row index whose trace (or span) is not stored, why. Bulk: a query per
    500 distinct trace ids, and one per 500 distinct (trace, span) pairs."""
    trace_ids = list(dict.fromkeys(r["trace_id"] for r in rows))
    known: set[str] = set()
    for start in range(0, len(trace_ids), 500):
        chunk = trace_ids[start:start + 500]
        known.update(conn.execute(select(_SPANS.c.trace_id).distinct()
                                  .where(_SPANS.c.trace_id.in_(chunk))).scalars())
    pairs = list(dict.fromkeys((r["trace_id"], r["span_id"]) for r in rows
                               if r["span_id"] and r["trace_id"] in known))
    known_pairs: set[tuple[str, str]] = set()
    for start in range(0, len(pairs), 500):
        chunk = pairs[start:start + 500]
        known_pairs.update(tuple(p) for p in conn.execute(
            select(_SPANS.c.trace_id, _SPANS.c.span_id)
            .where(tuple_(_SPANS.c.trace_id, _SPANS.c.span_id).in_(chunk))).all())
    missing = {}
    for index, row in enumerate(rows):
        if row["trace_id"] not in known:
            missing[index] = f"unknown trace id {row['trace_id']} (no span of it is stored)"
        elif row["span_id"] and (row["trace_id"], row["span_id"]) not in known_pairs:
            missing[index] = f"trace {row['trace_id']} has no span {row['span_id']}"
    return missing


# Functions that push spans still buffered in this process into the store (an
# instrumentation's force_flush). Feedback often follows a run within milliseconds,
# before the BatchSpanProcessor's delay has passed; flushing then retrying once makes
# `record_feedback(run.trace_id, ...)` right after the run work instead of "unknown".
_flush_hooks: list[Callable[[], Any]] = []
_flush_lock = threading.Lock()


def register_flush_hook(flush: Callable[[], Any]) -> Callable[[], None]:
    """Have ``record_feedback`` call ``flush()`` before refusing an unknown trace id.

    ``gt.instrument()`` registers its ``force_flush`` here; returns a function that
    unregisters it (call it at shutdown). A hook that raises is logged and skipped.
    """
    with _flush_lock:
        _flush_hooks.append(flush)

    def unregister() -> None:
        with _flush_lock:
            if flush in _flush_hooks:
                _flush_hooks.remove(flush)

    return unregister


def _flush_pending_spans() -> bool:
    """Flush every registered hook, and the global OTel SDK provider if there is one;
    True if anything was flushed (so a second look at the store may find more)."""
    with _flush_lock:
        hooks = list(_flush_hooks)
    for flush in hooks:
        try:
            flush()
        except Exception:  # feedback must not fail because an exporter did
            logger.warning("flushing spans before recording feedback failed", exc_info=True)
    flushed = bool(hooks)
    try:
        from opentelemetry import trace as otel_trace

        provider = otel_trace.get_tracer_provider()
        if hasattr(provider, "force_flush"):  # the SDK provider; the API's no-op has none
            provider.force_flush(5000)
            flushed = True
    except Exception:
        logger.warning("flushing the OpenTelemetry provider failed", exc_info=True)
    return flushed


def record_feedback(trace_id: str, score: float | None = None, label: str | None = None,
                    comment: str | None = None, name: str = "user", source: str = "user",
                    span_id: str | None = None, store: Store | str | None = None, *,
                    expected: str | None = None,
                    expected_field: str | None = None) -> Feedback:
    """Store one feedback record on a trace (or one of its spans) and return it.

    Refused with ``FeedbackError`` (message naming the problem): a malformed trace or
    span id, a score that is not a finite number, no score/label/comment at all, and a
    trace or span the store has no span of (``UnknownTraceError``, also a
    ``NotFoundError``); ``StoreMissing`` when there is no store. ``store`` defaults to
    the one ``gt.instrument()`` records into (see ``store.engine``). Before refusing an
    unknown trace (or a store not created yet) it flushes the spans still buffered in this process (see
    ``register_flush_hook``), so feedback right after a run works.
    """
    row = checked_feedback(trace_id, score=score, label=label, comment=comment, name=name,
                           source=source, span_id=span_id, expected=expected,
                           expected_field=expected_field)
    row["created_at"] = time.time()
    try:
        store = open_store(store)
    except StoreMissing:
        # instrument()'s store is created by its first export, which may still be
        # queued in this process: flush, then look once more.
        if not _flush_pending_spans():
            raise
        store = open_store(store)
    feedback_id = _insert_if_known(store, row)
    # Not found: the run may have just ended with its spans still buffered in this
    # process. Flush outside any transaction (the exporter needs the write lock).
    if feedback_id is None and _flush_pending_spans():
        feedback_id = _insert_if_known(store, row)
    if feedback_id is None:
        with store.read() as conn:
            reason = _missing_targets(conn, [row]).get(0, "unknown trace")
        raise UnknownTraceError(f"{reason} in the store {safe_url(store.url)}")
    return Feedback(id=int(feedback_id), **row)


def _insert_if_known(store: Store, row: dict[str, Any]) -> int | None:
    """Insert ``row`` if its trace (and span) is stored; its id, or None if not."""
    with store.write() as conn:
        if _missing_targets(conn, [row]):
            return None
        return conn.execute(insert(_FEEDBACK).values(**row)).inserted_primary_key[0]


# ---------------------------------------------------------------- bulk import


@dataclass(frozen=True)
class RejectedRow:
    line: int
    reason: str


@dataclass
class ImportReport:
    """What ``import_feedback`` did: how many rows were stored, and each refused row
    with its line number (1-based, counting the CSV header) and the reason."""

    path: str
    format: str
    accepted: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.rejected

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def _detect_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    first = text.lstrip()[:1]
    return "jsonl" if first == "{" else "csv"


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, row dict) per record; the line is where the record starts (a quoted
    comment may span lines)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:
        return
    headers = [h.strip().lower() for h in reader.fieldnames if h is not None]
    if "trace_id" not in headers:
        raise FeedbackError(f"the CSV header has no trace_id column (found: {', '.join(headers)})")
    reader.fieldnames = headers
    line = reader.line_num + 1
    for record in reader:
        start, line = line, reader.line_num + 1
        if None in record:  # more cells than headers
            yield start, f"{len(record[None])} more cells than the header has columns"
            continue
        if all(v is None or not str(v).strip() for v in record.values()):
            continue  # a blank line is not a row
        yield start, record


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as exc:
            yield number, f"not valid JSON ({exc.msg})"
            continue
        if not isinstance(record, dict):
            yield number, f"expected a JSON object, got {type(record).__name__}"
            continue
        yield number, record


def import_feedback(store: Store | str | None, path: str | Path) -> ImportReport:
    """Import feedback from a CSV (with a header) or JSONL file.

    Columns: trace_id (required), score, label, comment, name, source, span_id; others
    are ignored. The format comes from the extension (.csv; .jsonl/.ndjson/.json),
    else from the first character. Every row is checked as ``record_feedback`` checks
    one; the good rows are stored together in one transaction, the bad ones are
    reported with their line number and reason and nothing of them is stored. A file
    that cannot be read, or a CSV without a trace_id column, raises ``FeedbackError``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets add a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise FeedbackError(f"cannot read feedback file {path}: {exc}") from exc
    fmt = _detect_format(path, text)
    report = ImportReport(path=str(path), format=fmt)
    good: list[dict[str, Any]] = []
    lines: list[int] = []
    try:
        parsed = list(_csv_rows(text) if fmt == "csv" else _jsonl_rows(text))
    except csv.Error as exc:
        raise FeedbackError(f"{path} is not a readable CSV file: {exc}") from exc
    for line, record in parsed:
        if isinstance(record, str):
            report.rejected.append(RejectedRow(line, record))
            continue
        values = {k: record.get(k) for k in COLUMNS if k in record}
        values.setdefault("trace_id", None)
        try:
            good.append(checked_feedback(**values))
            lines.append(line)
        except FeedbackError as exc:
            report.rejected.append(RejectedRow(line, str(exc)))
    store = open_store(store)
    if good:
        now = time.time()
        with store.write() as conn:
            missing = _missing_targets(conn, good)
            keep = []
            for index, row in enumerate(good):
                if index in missing:
                    report.rejected.append(RejectedRow(lines[index], missing[index]))
                else:
                    keep.append(dict(row, created_at=now))
            if keep:
                conn.execute(insert(_FEEDBACK), keep)
            report.accepted = len(keep)
    report.rejected.sort(key=lambda r: r.line)
    return report


__all__ = [
    "Feedback",
    "ImportReport",
    "RejectedRow",
    "UnknownTraceError",
    "checked_feedback",
    "import_feedback",
    "record_feedback",
    "register_flush_hook",
]
