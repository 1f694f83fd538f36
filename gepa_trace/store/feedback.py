"""Recording feedback on traces: one at a time (``record_feedback``), from a file
(``import_feedback``, CSV or JSONL), or from ``gepa.feedback`` span events
(``store_event_feedback``, called by the span writer).

Feedback is what the optimizer later reads as production evidence, so a record that
could not mean anything is refused rather than stored (the checks are in
``feedback_fields``), and storing one is idempotent: a record whose key is already
stored with the same content is not stored again. Which records a ``replace`` replaces
is written in ``record_feedback``'s docstring; what several records in effect mean
together is ``store.verdict``'s rule.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError

from gepa_trace.errors import (
    FeedbackError,
    NotFoundError,
    StoreError,
    StoreMissing,
    StoreUnavailable,
)
from gepa_trace.store.engine import Store, open_store, resolve_url, safe_url
from gepa_trace.store.feedback_fields import COLUMNS, checked_feedback, feedback_id_of
from gepa_trace.store.feedback_records import (
    Outcome,
    missing_targets,
    store_event_feedback,
    store_rows,
)
from gepa_trace.store.queries import Feedback

logger = logging.getLogger(__name__)


class UnknownTraceError(FeedbackError, NotFoundError):
    """Feedback on a trace (or span) the store has never seen. Exit code 3, like any
    lookup of something that does not exist."""


class FeedbackConflict(FeedbackError):
    """A ``feedback_id`` already recorded with other content (and no ``replace``)."""


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


@dataclass(frozen=True, eq=False)
class RecordedFeedback(Feedback):
    """What storing one record did: the record in effect now (the new one, or the one
    already stored: ``duplicate``), and the ids of the records it ``replaced``. It
    equals the stored ``Feedback`` it is."""

    duplicate: bool = False
    replaced: tuple[int, ...] = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Feedback):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in Feedback.__dataclass_fields__)

    __hash__ = None  # type: ignore[assignment]

    @property
    def feedback_id(self) -> str | None:
        return feedback_id_of(self.feedback_key)


def record_feedback(trace_id: str, score: float | None = None, label: str | None = None,
                    comment: str | None = None, name: str = "user", source: str = "user",
                    span_id: str | None = None, store: Store | str | None = None, *,
                    expected: str | None = None, expected_field: str | None = None,
                    score_range: tuple[float, float] | str | None = None,
                    feedback_id: str | None = None,
                    replace: bool = False) -> RecordedFeedback:
    """Store one feedback record on a trace (or one of its spans) and return it.

    Fields (the README's feedback table): ``score`` within ``score_range`` (low, high),
    0..1 unless declared; ``label``; ``comment``; ``expected``, a correction: the right
    output, or with ``expected_field`` the right value of that output field; ``source``,
    user | reviewer | automated (aliases such as "human" are stored canonically);
    ``name``, what it measures; ``span_id`` to put it on one span; ``feedback_id``, the
    caller's idempotency key.

    Idempotent: the record's key is ``feedback_id`` when given, else a hash of its
    content. A key already stored with the same content (on a record in effect or one
    replaced since) stores nothing and returns that record with ``duplicate=True``; the same ``feedback_id`` with other content
    is refused (``FeedbackConflict``) unless ``replace``.

    Replacement (``replace=True``): the new record replaces the records in effect with
    the same ``feedback_id`` when one is given, else every record in effect with the
    same (trace_id, span_id, name, source). Replaced records keep their row with
    ``replaced_by`` set to the new id and no longer count (``store.verdict``). If a
    record with the same content is already in effect, it stays in effect (no new row;
    ``duplicate=True``) and the others it targets are replaced by it. Without
    ``replace`` records accumulate and ``store.verdict`` combines them.

    Refused with ``FeedbackError`` naming the problem: everything ``checked_feedback``
    refuses, and a trace or span the store has no span of (``UnknownTraceError``, also
    a ``NotFoundError``); ``StoreMissing`` when there is no store; ``StoreUnavailable``
    (a ``StoreError``, nothing recorded) when another writer holds the store's lock for
    more than ``FEEDBACK_WAIT_MS`` (2 s; the busy timeout while the store is first
    opened in this process) or the database cannot be reached. ``store`` defaults
    to the one ``gt.instrument()`` records into (see ``store.engine``). Before refusing
    an unknown trace (or a store not created yet) it flushes the spans still buffered in
    this process (see ``register_flush_hook``), so feedback right after a run works.
    """
    row = checked_feedback(trace_id, score=score, label=label, comment=comment, name=name,
                           source=source, span_id=span_id, expected=expected,
                           expected_field=expected_field, score_range=score_range,
                           feedback_id=feedback_id)
    row["created_at"] = time.time()
    url = store.url if isinstance(store, Store) else resolve_url(store)
    with _store_reachable(url):
        return _record(store, row, bool(replace))


# A feedback write waits this long for another writer's lock (SQLite), not the store's
# whole busy timeout: feedback is often recorded from a request handler.
FEEDBACK_WAIT_MS = 2000


@contextlib.contextmanager
def _store_reachable(url: str) -> Iterator[None]:
    """Database errors of a store that is locked or away -> ``StoreUnavailable``, one
    line naming the cause (never the SQL or its parameters)."""
    try:
        yield
    except (DBAPIError, StoreError) as exc:
        if isinstance(exc, DBAPIError):
            cause = exc
        elif type(exc) is StoreError and isinstance(exc.__cause__, DBAPIError):
            cause = exc.__cause__  # open_store wraps the database error of its migrations
        else:
            raise
        if isinstance(cause, IntegrityError):
            raise
        first = (str(cause.orig or cause).strip().splitlines() or [""])[0][:200]
        if "locked" in first or "busy" in first:
            raise StoreUnavailable(f"the store {safe_url(url)} is locked by another writer; "
                                   "nothing was recorded, try again") from None
        raise StoreUnavailable(f"cannot reach the store at {safe_url(url)}: {first}; "
                               "nothing was recorded") from None


def _record(store: Store | str | None, row: dict[str, Any], replace: bool
            ) -> RecordedFeedback:
    try:
        store = open_store(store)
    except StoreMissing:
        # instrument()'s store is created by its first export, which may still be
        # queued in this process: flush, then look once more.
        if not _flush_pending_spans():
            raise
        store = open_store(store)
    outcome = _store_if_known(store, row, replace)
    # Not found: the run may have just ended with its spans still buffered in this
    # process. Flush outside any transaction (the exporter needs the write lock).
    if outcome is None and _flush_pending_spans():
        outcome = _store_if_known(store, row, replace)
    if outcome is None:
        with store.read() as conn:
            reason = missing_targets(conn, [row]).get(0, "unknown trace")
        raise UnknownTraceError(f"{reason} in the store {safe_url(store.url)}")
    if outcome.conflict:
        raise FeedbackConflict(outcome.conflict)
    stored = {f: outcome.record.get(f) for f in Feedback.__dataclass_fields__}
    return RecordedFeedback(**stored, duplicate=outcome.duplicate, replaced=outcome.replaced)


def _once_more_on_key_clash(write: Callable[[], Any]) -> Any:
    """``write()``; once more when it failed on the unique key: a concurrent writer of
    the same record (PostgreSQL) stored it first, and the second attempt sees it."""
    try:
        return write()
    except IntegrityError:
        return write()


def _store_if_known(store: Store, row: dict[str, Any], replace: bool) -> Outcome | None:
    """Store ``row`` if its trace (and span) is stored; None if not."""
    def write() -> Outcome | None:
        with store.write(busy_ms=FEEDBACK_WAIT_MS) as conn:
            if missing_targets(conn, [row]):
                return None
            return store_rows(conn, [row], replace)[0]

    return _once_more_on_key_clash(write)


# ---------------------------------------------------------------- bulk import


@dataclass(frozen=True)
class RejectedRow:
    line: int
    reason: str


@dataclass
class ImportReport:
    """What ``import_feedback`` did: how many rows were stored (``accepted``), how many
    were already recorded (``duplicates``: stored earlier, or repeated in the file), how
    many earlier records the rows replaced (``replaced``), how many rows a later row of
    the same file overrode under ``replace`` (``superseded``, not stored), and each
    refused row with its line number (1-based, counting the CSV header) and the reason."""

    path: str
    format: str
    accepted: int = 0
    duplicates: int = 0
    replaced: int = 0
    superseded: int = 0
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


def csv_records(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, row dict) per record of a CSV with a trace_id column, or (line, why it
    cannot be read); the line is where the record starts (a quoted comment may span
    lines). ``FeedbackError`` when the header has no trace_id column."""
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


def jsonl_records(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, object) per non-blank line of a JSONL text, or (line, why it is not one)."""
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


def import_feedback(store: Store | str | None, path: str | Path, *,
                    replace: bool = False) -> ImportReport:
    """Import feedback from a CSV (with a header) or JSONL file.

    Columns: trace_id (required), span_id, name, score, score_range ("1,5", "1-5", or
    in JSONL [1, 5]) or score_low and score_high, label, comment, expected,
    expected_field, source, feedback_id; others are ignored. The format comes from the
    extension (.csv; .jsonl/.ndjson/.json), else from the first character.

    Every row is checked and stored as ``record_feedback`` stores one, in file order and
    in one transaction: a row already recorded (by an earlier import, or earlier in the
    file) is counted in ``duplicates`` and stores nothing, so importing a file twice
    stores it once. With ``replace`` each row replaces as ``record_feedback(replace=True)``
    does, and only the file's last row for each target counts (the earlier ones are
    ``superseded``, not stored), so importing it again stores nothing either. Bad rows (and a feedback_id already recorded with other content) are reported
    with their line number and reason, and nothing of them is stored. A file that cannot
    be read, or a CSV without a trace_id column, raises ``FeedbackError``.
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
        parsed = list(csv_records(text) if fmt == "csv" else jsonl_records(text))
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
    refused = len(report.rejected)

    def write() -> None:
        del report.rejected[refused:]  # a second attempt reports afresh
        _import_rows(store, good, lines, replace, report)

    _once_more_on_key_clash(write)
    report.rejected.sort(key=lambda r: r.line)
    return report


def _import_rows(store: Store, good: list[dict[str, Any]], lines: list[int], replace: bool,
                 report: ImportReport) -> None:
    if not good:
        return
    now = time.time()
    with store.write() as conn:
        missing = missing_targets(conn, good)
        keep, kept_lines = [], []
        last = _last_row_per_target(good) if replace else None
        for index, row in enumerate(good):
            if index in missing:
                report.rejected.append(RejectedRow(lines[index], missing[index]))
            elif last is not None and index not in last:
                report.superseded += 1
            else:
                keep.append(dict(row, created_at=now))
                kept_lines.append(lines[index])
        outcomes = store_rows(conn, keep, replace)
    report.accepted = sum(1 for o in outcomes if not o.conflict and not o.duplicate)
    report.duplicates = sum(1 for o in outcomes if o.duplicate)
    report.replaced = sum(len(o.replaced) for o in outcomes)
    report.rejected.extend(RejectedRow(line, o.conflict)
                           for line, o in zip(kept_lines, outcomes) if o.conflict)


def _last_row_per_target(rows: list[dict[str, Any]]) -> set[int]:
    """Under ``replace`` a file says one thing per target (a feedback_id, else the
    trace, span, name and source): the indexes of its last row for each. Applying only
    those makes importing the file again a no-op, as without ``replace``."""
    last: dict[tuple, int] = {}
    for index, row in enumerate(rows):
        key = row["feedback_key"]
        target = (key,) if key.startswith("id:") else (
            row["trace_id"], row["span_id"], row["name"], row["source"])
        last[target] = index
    return set(last.values())


__all__ = [
    "Feedback",
    "FeedbackConflict",
    "ImportReport",
    "RecordedFeedback",
    "RejectedRow",
    "UnknownTraceError",
    "checked_feedback",
    "csv_records",
    "import_feedback",
    "jsonl_records",
    "record_feedback",
    "register_flush_hook",
    "store_event_feedback",
]
