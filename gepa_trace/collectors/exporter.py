"""The SQL span exporter: finished OTel spans -> the store, one transaction per batch.

``SqlSpanExporter`` is an OpenTelemetry ``SpanExporter`` meant to sit behind a
``BatchSpanProcessor``. Its contract (the SDK's, plus ours):

- ``export`` never raises into the application. A store that cannot be opened or
  written (read-only, locked beyond the busy timeout, connection dropped) is reported as
  ``SpanExportResult.FAILURE``. The spans of batches that failed for such a transient
  reason are kept (up to ``max_pending`` spans, oldest dropped first) and written with
  the next batch once the store accepts writes again; a span is never written twice
  (``write_spans`` skips stored ids). When a try blocked (a locked store waits the busy
  timeout), the batches of the next ``RETRY_S`` seconds are only kept, so the batch
  processor's queue keeps draining into the kept spans instead of overflowing.
- Every span given up on is counted in ``dropped``: overflow of ``max_pending``, a
  batch that cannot be converted or written for good, and (``note_queue_full``) spans
  the batch processor in front refused because its queue was full.
- Logging is per episode, never per span or per batch: one warning when writing starts
  failing (the cause, never span content or SQL parameters), repeated failures folded
  into one line with a count at most every ``REPEAT_LOG_S`` seconds, and one info line
  when writing recovers (spans kept and written meanwhile, spans dropped meanwhile).
- A SQLite file deleted or replaced under us is noticed before each write (the file at
  the path is gone or has another inode): the store is reopened, which recreates the
  file and schema, instead of writing into the deleted file and calling it exported.
  After a failed write the connection pool is reset, so a store made read-only and then
  writable again is written without a restart.
- The store is opened lazily, on the first export, and again after a failed open: an
  agent starting while its store is unavailable still starts.
- Instrumentation is suppressed while exporting, so writing spans creates no spans.
- An unexpected error (a bug of ours, not the store's) is logged the same way; when
  ``raise_internal_errors`` is true (default: under pytest) it is re-raised instead.
- After ``shutdown`` every export fails fast; ``force_flush`` has nothing buffered of its
  own beyond the pending spans, which it tries to write. It returns False while spans
  are pending or when any span was dropped since the previous ``force_flush``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from gepa_trace.collectors.langchain import SUPPRESS_KEY
from gepa_trace.config import under_pytest
from gepa_trace.errors import GepaTraceError, StoreError
from gepa_trace.store.engine import (
    Store,
    failure_cause,
    file_identity,
    file_replaced,
    forget_store,
    open_store,
    resolve_url,
    safe_url,
    sqlite_path,
)

logger = logging.getLogger("gepa_trace.capture")

REPEAT_LOG_S = 60.0  # repeated failures or drops: at most one log line per this many seconds
RETRY_S = 1.0  # while the store refuses writes, batches are only kept, trying it this often


def span_to_dict(span: ReadableSpan, resources: dict[int, dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
    """The span dict of ``store.spans.write_spans`` for one finished OTel span.

    ``resources`` caches resource attribute dicts by resource identity (a provider has
    one resource; converting it once per batch, not once per span, matters)."""
    ctx = span.context
    parent = span.parent
    resource = span.resource
    if resources is not None:
        res = resources.get(id(resource))
        if res is None:
            res = resources[id(resource)] = dict(resource.attributes) if resource else {}
    else:
        res = dict(resource.attributes) if resource else {}
    status = span.status
    events = span.events
    # Sequence values stay tuples: JSON writes them as arrays, and copying every
    # attribute dict to turn them into lists cost more than the insert itself.
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time if span.end_time is not None else span.start_time,
        "status_code": status.status_code.name,
        "status_message": status.description,
        "attributes": dict(span.attributes) if span.attributes else {},
        "events": [{"name": e.name, "time_ns": e.timestamp,
                    "attributes": dict(e.attributes) if e.attributes else {}}
                   for e in events] if events else [],
        "resource": res,
    }


def _transient(exc: BaseException) -> bool:
    """A failure worth retrying the same spans for: the store is away, not the data bad."""
    if isinstance(exc, StoreError):
        return True
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class SqlSpanExporter(SpanExporter):
    """Writes batches of finished spans into the store (see the module docstring)."""

    def __init__(self, store: str | Store | None = None, *, max_pending: int = 10_000,
                 raise_internal_errors: bool | None = None):
        if max_pending < 0:
            raise ValueError("max_pending must be >= 0")
        if isinstance(store, Store):
            self._store: Store | None = store
            self.url = store.url
        else:
            self._store = None
            self.url = resolve_url(store)
        self.max_pending = max_pending
        self.raise_internal_errors = (under_pytest() if raise_internal_errors is None
                                      else raise_internal_errors)
        self._pending: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()  # one export at a time (BSP worker vs force_flush)
        self._shutdown = False
        self._count_lock = threading.Lock()  # dropped is also counted from app threads
        self.exported = 0  # spans written
        self.dropped = 0  # spans given up on
        self.last_error: str | None = None
        self._path = sqlite_path(self.url)
        self._inode: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we opened
        # the current failure episode (None: writing works)
        self._failing_since: float | None = None
        self._failures = 0  # failed exports in this episode
        self._folded = 0  # failures not logged yet (folded into the next repeat line)
        self._last_log = 0.0
        self._retry_at = 0.0
        self._dropped_logged = 0  # dropped count already reported in a log line
        self._dropped_at_flush = 0

    def _open(self) -> Store:
        if self._store is not None and self._path is not None and self._file_replaced():
            logger.warning("gepa-trace: the store file %s was deleted or replaced; "
                           "recreating it", self._path)
            forget_store(self.url)
            self._store = None
            self._inode = None
        if self._store is None:
            self._store = open_store(self.url, create=True)  # recording creates the store
            if self._path is not None:
                self._inode = file_identity(self._path)
        return self._store

    def _file_replaced(self) -> bool:
        return file_replaced(self._path, self._inode)  # type: ignore[arg-type]

    def note_queue_full(self, count: int = 1) -> None:
        """Count spans the batch processor refused because its queue was full."""
        with self._count_lock:  # logged with the count by the next write or flush
            self.dropped += count

    def _drop(self, count: int) -> None:
        with self._count_lock:
            self.dropped += count

    def _log_drops(self, now: float) -> None:
        new = self.dropped - self._dropped_logged
        if new <= 0:
            return
        self._dropped_logged += new
        self._last_log = now
        logger.warning("gepa-trace dropped %d spans for %s (%d in all): the queue was full "
                       "or more than %d spans were waiting for the store",
                       new, safe_url(self.url), self.dropped, self.max_pending)

    def export(self, spans: Sequence[ReadableSpan], *, retry_now: bool = False
               ) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        token = otel_context.attach(otel_context.set_value(SUPPRESS_KEY, True))
        try:
            with self._lock:
                return self._export(spans, retry_now)
        finally:
            otel_context.detach(token)

    def _export(self, spans: Sequence[ReadableSpan], retry_now: bool) -> SpanExportResult:
        from gepa_trace.store.spans import write_spans

        try:
            resources: dict[int, dict[str, Any]] = {}
            batch = [span_to_dict(s, resources) for s in spans]
        except Exception as exc:  # noqa: BLE001 - an exporter never raises into the app
            self._drop(len(spans))
            self._warn(exc, len(spans), internal=True)
            return SpanExportResult.FAILURE
        kept = len(self._pending)
        if kept:
            batch = list(self._pending) + batch
        if (self._failing_since is not None and not retry_now and self.max_pending
                and time.monotonic() < self._retry_at):
            # The last try blocked (a locked store waits the busy timeout) while the
            # queue in front filled up: keep the batch, try again RETRY_S after it.
            self._keep(batch)
            self._folded += 1
            return SpanExportResult.FAILURE
        started = time.monotonic()
        try:
            store = self._open()
        except Exception as exc:  # noqa: BLE001 - no store yet (missing, refused): keep the spans
            if self.max_pending:
                self._keep(batch)
            else:
                self._drop(len(batch))  # nothing may be kept: counted, not lost silently
            self._warn(exc, len(batch), internal=False, started=started)
            return SpanExportResult.FAILURE
        try:
            write_spans(store, batch)
        except Exception as exc:  # noqa: BLE001 - an exporter never raises into the app
            internal = not isinstance(exc, (SQLAlchemyError, GepaTraceError, OSError))
            if not internal and _transient(exc) and self.max_pending:
                self._keep(batch)
            else:
                self._drop(len(batch))
                self._pending.clear()
            if not internal:
                # A connection opened while the file was read-only stays read-only, and
                # one may point at a file since deleted: reconnect on the next try.
                store.dispose()
            self._warn(exc, len(batch), internal=internal, started=started)
            return SpanExportResult.FAILURE
        self._pending.clear()
        self.exported += len(batch)
        if self._failing_since is not None:
            self._recovered(kept, len(batch))
        elif self.dropped > self._dropped_logged:
            now = time.monotonic()
            if now - self._last_log >= REPEAT_LOG_S:
                self._log_drops(now)
        return SpanExportResult.SUCCESS

    def _recovered(self, kept: int, written: int) -> None:
        logger.info("gepa-trace: store %s accepts spans again after %d failed writes over "
                    "%.0f s: %d spans kept meanwhile are now written (%d in this write); %d "
                    "spans dropped meanwhile", safe_url(self.url), self._failures,
                    time.monotonic() - (self._failing_since or 0.0),
                    kept, written, self.dropped
                    - self._dropped_logged)
        self._dropped_logged = self.dropped
        self._failing_since = None
        self._failures = self._folded = 0
        self.last_error = None

    def _keep(self, batch: list[dict[str, Any]]) -> None:
        overflow = len(batch) - self.max_pending
        if overflow > 0:
            self._drop(overflow)
            batch = batch[overflow:]
        self._pending = deque(batch)

    def _warn(self, exc: BaseException, count: int, *, internal: bool,
              started: float | None = None) -> None:
        reason = f"{type(exc).__name__}: {failure_cause(exc)}"
        self.last_error = reason
        now = time.monotonic()
        self._failures += 1
        slow = started is not None and now - started > 0.1  # it waited for a lock
        self._retry_at = now + RETRY_S if slow else 0.0
        if self._failing_since is None:
            self._failing_since = now
            self._last_log = now
            kept = f"; {len(self._pending)} spans kept to retry" if self._pending else ""
            logger.warning("gepa-trace could not write %d spans to %s (%s)%s; the "
                           "application is unaffected", count, safe_url(self.url), reason,
                           kept, exc_info=exc if internal else None)
        elif now - self._last_log >= REPEAT_LOG_S:
            self._last_log = now
            new_drops = self.dropped - self._dropped_logged
            self._dropped_logged = self.dropped
            logger.warning("gepa-trace still cannot write spans to %s (%s): %d more failed "
                           "writes, %d spans kept to retry, %d dropped", safe_url(self.url),
                           reason, self._folded + 1, len(self._pending), new_drops)
            self._folded = 0
        else:
            self._folded += 1
        if internal and self.raise_internal_errors:
            raise exc

    @property
    def pending(self) -> int:
        """Spans of failed batches waiting for the store to come back."""
        return len(self._pending)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Try once more to write the spans kept from failed batches. False while spans
        are still pending or when any span was dropped since the previous call."""
        if self._shutdown:
            return False
        if self._pending:
            self.export([], retry_now=True)
        if self._failing_since is None and self.dropped > self._dropped_logged:
            self._log_drops(time.monotonic())
        with self._count_lock:
            clean = self.dropped == self._dropped_at_flush
            self._dropped_at_flush = self.dropped
        return clean and not self._pending

    def shutdown(self) -> None:
        if self._shutdown:
            return
        if self._pending:
            self.force_flush()
        self._shutdown = True
        if self.dropped > self._dropped_logged:
            self._log_drops(time.monotonic())
        if self._pending:
            logger.warning("gepa-trace: %d spans could not be written to %s before shutdown",
                           len(self._pending), safe_url(self.url))
            self._drop(len(self._pending))
            self._pending.clear()


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """A ``BatchSpanProcessor`` in front of a ``SqlSpanExporter`` that counts, instead of
    silently dropping, the spans its full queue cannot take.

    The SDK's processor, when its queue is full, logs a warning per span and pushes the
    oldest queued span out, counted nowhere. Here a span that finds the queue full is not
    queued; it is counted in ``exporter.dropped`` (logged once per episode by the
    exporter). Two threads ending spans at the same instant on a queue one short of
    full may still let the SDK push one span out uncounted."""

    def __init__(self, exporter: SqlSpanExporter, **kwargs: Any):
        super().__init__(exporter, **kwargs)
        self._counting = exporter

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return
        # The SDK's internals (opentelemetry-sdk 1.45); without them, its own behaviour.
        bp = getattr(self, "_batch_processor", None)
        queue, limit = getattr(bp, "_queue", None), getattr(bp, "_max_queue_size", None)
        if (queue is not None and limit is not None and not getattr(bp, "_shutdown", True)
                and len(queue) >= limit):
            self._counting.note_queue_full(1)
            return
        super().on_end(span)
