"""The SQL span exporter: finished OTel spans -> the store, one transaction per batch.

``SqlSpanExporter`` is an OpenTelemetry ``SpanExporter`` meant to sit behind a
``BatchSpanProcessor``. Its contract (the SDK's, plus ours):

- ``export`` never raises into the application. A store that cannot be opened or
  written (read-only, locked beyond the busy timeout, connection dropped) is logged as
  a warning once per distinct error, and the batch is reported as
  ``SpanExportResult.FAILURE``. The spans of batches that failed for such a transient
  reason are kept (up to ``max_pending`` spans, oldest dropped first) and written with
  the next batch once the store accepts writes again; a span is never written twice
  (``write_spans`` skips stored ids).
- The store is opened lazily, on the first export, and again after a failed open: an
  agent starting while its store is unavailable still starts.
- Instrumentation is suppressed while exporting, so writing spans creates no spans.
- An unexpected error (a bug of ours, not the store's) is logged the same way; when
  ``raise_internal_errors`` is true (default: under pytest) it is re-raised instead.
- After ``shutdown`` every export fails fast; ``force_flush`` has nothing buffered of its
  own beyond the pending spans, which it tries to write.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from gepa_trace.collectors.langchain import SUPPRESS_KEY
from gepa_trace.config import under_pytest
from gepa_trace.errors import GepaTraceError, StoreError
from gepa_trace.store.engine import Store, open_store, resolve_url, safe_url

logger = logging.getLogger("gepa_trace.capture")


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
        self._failing: set[str] = set()  # distinct errors already warned about
        self.exported = 0  # spans written
        self.dropped = 0  # spans given up on
        self.last_error: str | None = None

    def _open(self) -> Store:
        if self._store is None:
            self._store = open_store(self.url, create=True)  # recording creates the store
        return self._store

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        token = otel_context.attach(otel_context.set_value(SUPPRESS_KEY, True))
        try:
            with self._lock:
                return self._export(spans)
        finally:
            otel_context.detach(token)

    def _export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from gepa_trace.store.spans import write_spans

        try:
            resources: dict[int, dict[str, Any]] = {}
            batch = [span_to_dict(s, resources) for s in spans]
        except Exception as exc:  # noqa: BLE001 - an exporter never raises into the app
            self.dropped += len(spans)
            self._warn(exc, len(spans), internal=True)
            return SpanExportResult.FAILURE
        if self._pending:
            batch = list(self._pending) + batch
        try:
            store = self._open()
        except Exception as exc:  # noqa: BLE001 - no store yet (missing, refused): keep the spans
            if self.max_pending:
                self._keep(batch)
            self._warn(exc, len(batch), internal=False)
            return SpanExportResult.FAILURE
        try:
            write_spans(store, batch)
        except Exception as exc:  # noqa: BLE001 - an exporter never raises into the app
            internal = not isinstance(exc, (SQLAlchemyError, GepaTraceError, OSError))
            if not internal and _transient(exc) and self.max_pending:
                self._keep(batch)
            else:
                self.dropped += len(batch)
                self._pending.clear()
            self._warn(exc, len(batch), internal=internal)
            return SpanExportResult.FAILURE
        self._pending.clear()
        self.exported += len(batch)
        if self._failing:
            logger.warning("gepa-trace: store %s accepts spans again (%d written)",
                           safe_url(self.url), len(batch))
            self._failing.clear()
            self.last_error = None
        return SpanExportResult.SUCCESS

    def _keep(self, batch: list[dict[str, Any]]) -> None:
        overflow = len(batch) - self.max_pending
        if overflow > 0:
            self.dropped += overflow
            batch = batch[overflow:]
        self._pending = deque(batch)

    def _warn(self, exc: BaseException, count: int, *, internal: bool) -> None:
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
        self.last_error = reason
        if reason not in self._failing:
            self._failing.add(reason)
            kept = f"; {len(self._pending)} spans kept to retry" if self._pending else ""
            logger.warning("gepa-trace could not write %d spans to %s (%s)%s; the "
                           "application is unaffected", count, safe_url(self.url), reason,
                           kept, exc_info=exc if internal else None)
        else:
            logger.debug("gepa-trace: still cannot write spans (%s)", reason)
        if internal and self.raise_internal_errors:
            raise exc

    @property
    def pending(self) -> int:
        """Spans of failed batches waiting for the store to come back."""
        return len(self._pending)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Try once more to write the spans kept from failed batches."""
        if self._shutdown:
            return False
        if not self._pending:
            return True
        return self.export([]) is SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self._shutdown:
            return
        if self._pending:
            self.force_flush()
        self._shutdown = True
        if self._pending:
            logger.warning("gepa-trace: %d spans could not be written to %s before shutdown",
                           len(self._pending), safe_url(self.url))
            self.dropped += len(self._pending)
            self._pending.clear()
