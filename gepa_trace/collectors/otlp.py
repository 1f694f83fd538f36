"""The OTLP receiver behind ``gepa-trace collect``, and ``ingest`` of OTLP files.

``Collector(store, CollectorConfig(...)).start()`` serves OTLP/HTTP and OTLP/gRPC on
loopback by default; both hand parsed requests to one ``Receiver``, which checks the
token, builds the spans' rows in the request's thread, counts, and passes the rows to
the group-commit ``SpanWriter`` (``otlp_writer``).
A reply of success means the spans are committed. ``stop()`` refuses new requests,
lets the accepted ones finish and commit, then closes the writer; the CLI calls it on
SIGTERM.

``ingest_files(store, paths)`` reads OTLP JSON (one request per file, or one per line as
the OpenTelemetry Collector's file exporter writes) and protobuf files through the same
decoder and row builder, and writes them with ``store.spans.write_prepared``.

The layers, each in its own module: ``admission`` (the memory of requests in flight,
counted before decoding), ``otlp_decode`` (bytes -> rows), ``otlp_writer`` (group
commit, and reopening a store deleted under it), ``otlp_http`` and ``otlp_grpc`` (the
two transports), ``otlp_overflow`` (HTTP connections past the cap). What each bound
means against hostile clients is in ``CollectorConfig``.
"""

from __future__ import annotations

import gc
import hmac
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gepa_trace.collectors.admission import MemoryBudget
from gepa_trace.collectors.otlp_decode import (
    JSON,
    PROTOBUF,
    Decoded,
    RequestError,
    count_spans,
    decode_json,
    decode_protobuf,
    prepared_batches,
)
from gepa_trace.collectors.otlp_writer import SpanWriter, wait_until
from gepa_trace.errors import ConfigError, GepaTraceError
from gepa_trace.store.engine import Store
from gepa_trace.store.spans import PreparedSpans, skipped_feedback_events, write_prepared

log = logging.getLogger(__name__)

#: The JSON fields of ``POST /v1/feedback``: those of ``record_feedback`` (score_range as
#: [low, high]) and ``replace`` (true/false).
FEEDBACK_FIELDS = ("trace_id", "span_id", "name", "score", "score_range", "label", "comment",
                   "expected", "expected_field", "source", "feedback_id", "replace")


@dataclass
class CollectorConfig:
    """How ``gepa-trace collect`` listens, and what it holds against hostile clients.

    Port 0 picks a free port; None disables. The bounds:

    - ``max_memory_bytes``: the memory that requests in flight may hold at once, counted
      before it is spent (``admission``): declared body, inflated bytes, decoded spans,
      until each request is answered. Over it: 429 + Retry-After (gRPC: UNAVAILABLE with
      ``retry-after``), nothing decoded; a request that alone exceeds it: 413. With the
      default 512 MB, gRPC messages that grpc holds before admission (at most
      ``grpc_workers`` x ``max_grpc_message_bytes``: 64 MB) and the process itself
      (~100 MB), the collector stays under 1 GB.
    - ``max_body_bytes``: the largest HTTP body, once inflated (413 over it).
    - ``max_grpc_message_bytes``: the largest gRPC message, once inflated; 4 MiB, the
      OpenTelemetry Collector's default (exporters send 512 spans a batch, far under).
      grpc enforces it in C, so a larger message never reaches Python (``otlp_grpc``).
    - ``max_connections``: open HTTP connections served by a thread each; past it a
      connection gets one answer and is closed (``GET /healthz`` is still answered,
      anything else gets 503 + Retry-After).
    - ``idle_timeout_s``: a keep-alive connection with no request is closed after it.
    - ``header_timeout_s``: a request's line and headers must arrive within it of its
      first byte (a client sending a byte a second is cut off).
    - ``request_timeout_s``: from a request's first byte to its answer, body and commit
      included; shorter than the OTLP exporters' 10 s, so that they get our 503 (and
      retry) rather than time out themselves. A body not received in time gets 408.
    """

    host: str = "127.0.0.1"
    http_port: int | None = 4318
    grpc_port: int | None = 4317
    token: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_grpc_message_bytes: int = 4 * 1024 * 1024
    max_pending_spans: int = 100_000
    max_batch_spans: int = 20_000
    max_memory_bytes: int = 512 * 1024 * 1024
    max_connections: int = 256
    idle_timeout_s: float = 30.0
    header_timeout_s: float = 5.0
    request_timeout_s: float = 8.0
    grpc_workers: int = 16
    #: Bind the ports with SO_REUSEPORT, shared with the other processes of ``gepa-trace
    #: collect --workers`` (``collectors.workers``); off, a port in use is an error.
    reuse_port: bool = False

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_grpc_message_bytes", "max_memory_bytes",
                     "max_connections", "idle_timeout_s", "header_timeout_s",
                     "request_timeout_s", "grpc_workers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be between 0 and 65535, not {port}")
        if self.token == "":
            raise ConfigError("token must not be empty (omit it to accept any client)")


@dataclass
class ReceiverStats:
    requests: int = 0
    spans_accepted: int = 0
    spans_rejected: int = 0


class Receiver:
    """What the HTTP and gRPC transports share. Thread-safe."""

    def __init__(self, writer: SpanWriter, config: CollectorConfig):
        self.writer = writer
        self.config = config
        self.token = config.token
        self.max_body_bytes = config.max_body_bytes
        self.budget = MemoryBudget(config.max_memory_bytes)
        #: open HTTP connections (set by the HTTP transport), for /healthz
        self.open_connections: Callable[[], int] = lambda: 0
        self.accepting = True
        self.stats = ReceiverStats()
        self._lock = threading.Lock()
        self._in_flight = 0

    def authorized(self, header: str | None) -> bool:
        """True when no token is configured, or ``header`` is ``Bearer <token>``."""
        if self.token is None:
            return True
        if not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        # compare_digest: the time taken must not reveal how much of the token matched
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self.token.encode())

    @property
    def store(self) -> Store:
        """The writer's store (it may reopen a SQLite file deleted under it)."""
        return self.writer.store

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    @property
    def busy_requests(self) -> int:
        return self._in_flight

    def export(self, request: ExportTraceServiceRequest, decoded: Decoded,
               deadline: float | None = None) -> None:
        """Store the spans of one parsed request; returns once committed (see
        SpanWriter.write), or raises TimeoutError at ``deadline`` (``time.monotonic()``;
        default: the request timeout from now). Spans with invalid ids or times
        (``store.spans.refused_times``) are added to ``decoded``'s rejected spans, and
        spans stored flagged to its warnings, for the partial-success answer.

        The request's rows are built here, in the request's thread, straight from the
        protobuf message (``otlp_decode.prepared_batches``), so that the writer thread
        only runs transactions. A request of more spans than the writer commits at once
        is handed over in slices of ``max_batch_spans``, each after the previous one is
        committed, so that it never fills the writer's queue alone: the other clients'
        requests are committed between its slices instead of being answered 429 until
        it is done. If a slice fails, the client's retry stores no duplicate of the
        slices before.
        """
        with self._lock:
            self.stats.requests += 1
        if deadline is None:
            deadline = time.monotonic() + self.config.request_timeout_s
        writer = self.writer
        writer.check_room(min(count_spans(request), writer.max_batch_spans))
        flagged = stored = 0
        for batch in prepared_batches(request, decoded, writer.max_batch_spans):
            if batch.rows:
                writer.write_prepared(batch, len(batch.rows),
                                      timeout=max(0.05, deadline - time.monotonic()))
                flagged += batch.flagged
                stored += len(batch.rows)
        if flagged:
            decoded.warnings.append(
                f"{flagged} span(s) stored flagged inconsistent: their "
                "gepa.prompt.version is not the hash of their template")
        with self._lock:
            self.stats.spans_accepted += stored
            self.stats.spans_rejected += decoded.rejected

    def feedback(self, fields: Any) -> tuple[int, dict[str, Any]]:
        """Record one feedback (the fields of ``record_feedback``); (HTTP status, body).

        200 with ``{"ok": true, "duplicate": bool, "replaced": [ids], "feedback": {...}}``
        also when the record was already stored (a client's retry stores nothing); 400
        for a refused record, 404 for an unknown trace, 409 for a feedback_id already
        recorded with other content (send ``"replace": true`` to replace it).
        """
        if not isinstance(fields, dict):
            return 400, {"error": "feedback must be a JSON object"}
        unknown = sorted(set(fields) - set(FEEDBACK_FIELDS))
        if unknown:
            return 400, {"error": f"unknown feedback fields {unknown}; "
                                  f"expected {list(FEEDBACK_FIELDS)}"}
        if not isinstance(fields.get("trace_id"), str) or not fields["trace_id"]:
            return 400, {"error": "trace_id (a string) is required"}
        if not isinstance(fields.get("replace", False), bool):
            return 400, {"error": "replace must be true or false"}
        from gepa_trace.errors import NotFoundError
        from gepa_trace.store.feedback import FeedbackConflict, record_feedback

        try:
            result = record_feedback(store=self.store, **fields)
        except NotFoundError as exc:
            return 404, {"error": str(exc)}
        except FeedbackConflict as exc:
            return 409, {"error": str(exc)}
        except (GepaTraceError, TypeError, ValueError) as exc:
            return 400, {"error": str(exc)}
        body = _jsonable(result)
        for key in ("duplicate", "replaced"):
            body.pop(key, None)
        return 200, {"ok": True, "duplicate": result.duplicate,
                     "replaced": list(result.replaced), "feedback": body}

    def health(self) -> dict[str, Any]:
        """The collector's real state: ``status`` ok / degraded (the store refuses
        writes) / stopping; the store, the writer's queue and its lag (age of the oldest
        request waiting for its commit), the memory admitted, the open connections."""
        failures = self.writer.failures
        writer, budget = self.writer, self.budget
        status = ("stopping" if not self.accepting
                  else "degraded" if failures.failing else "ok")
        return {"status": status, "pid": os.getpid(),
                "store": {"writable": not failures.failing,
                          "last_error": failures.last_error if failures.failing else None},
                "queue": {"pending_spans": writer.pending_spans,
                          "pending_requests": writer.pending_requests,
                          "lag_s": round(writer.lag_s, 3)},
                "memory": {"admitted_bytes": budget.used, "peak_bytes": budget.peak,
                           "limit_bytes": budget.limit, "refused_requests": budget.refused},
                "connections": {"open": self.open_connections(),
                                "limit": self.config.max_connections},
                "pending_spans": writer.pending_spans,
                "stored_spans": writer.stored_spans,
                "transactions": writer.transactions,
                "rejected_spans": self.stats.spans_rejected,
                "skipped_feedback_events": sum(skipped_feedback_events().values())}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    return str(value)


def tune_sqlite_for_bulk_writes(store: Store) -> None:
    """Give this process's SQLite connections a 64 MB page cache and checkpoint the WAL
    every ~80 MB instead of every 4 MB.

    A collector inserts spans without pause; the span table's primary key is random
    (trace ids), so each transaction dirties pages all over its index, and SQLite's
    default 4 MB auto-checkpoint made the writer copy those pages back almost every
    transaction (insert cost doubled between 40k and 200k stored spans). Readers in
    other processes are unaffected; the WAL is still checkpointed, only less often.
    Affects connections opened from now on, so the idle ones are dropped.
    """
    if store.dialect != "sqlite":
        return
    from sqlalchemy import event

    if not event.contains(store.engine, "connect", _bulk_write_pragmas):
        event.listen(store.engine, "connect", _bulk_write_pragmas)
        store.engine.dispose()


def _bulk_write_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.execute("PRAGMA wal_autocheckpoint=20000")
    finally:
        cursor.close()


def tune_process_for_ingest() -> None:
    """Interpreter settings for a process that mostly receives spans (``gepa-trace
    collect``; ``bench/bench_collector.py`` sets the same). Process-wide: call it once,
    after imports and before serving.

    - A 1 ms GIL switch interval: the single writer thread gives up the GIL during each
      database statement and must win it back from the request threads; at the default
      5 ms that wait, several times per transaction, was a large share of a batch's time.
    - The cyclic garbage collector runs after 20,000 net allocations instead of 700,
      and never walks the objects alive at startup (``gc.freeze``). Decoding a request
      allocates a dict or two per attribute, but they are freed as soon as the span's
      row is built, and the rows waiting for their commit are tuples of strings and
      numbers: a 100,000-span bench_collector run now triggers no collection over HTTP
      and one young one over gRPC (when span dicts waited for the commit, collections
      walked them again and again: 0.6-0.9 s of every 100,000 spans' ~5 s of CPU).
      Requests make almost no cycles, so little waits for the rare collections.
    """
    sys.setswitchinterval(0.001)
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


class Collector:
    """OTLP/HTTP + OTLP/gRPC receiver writing into one store (see module docstring)."""

    def __init__(self, store: Store, config: CollectorConfig | None = None, *,
                 writer: SpanWriter | None = None):
        self.config = config or CollectorConfig()
        self.writer = writer or SpanWriter(store,
                                           max_pending_spans=self.config.max_pending_spans,
                                           max_batch_spans=self.config.max_batch_spans,
                                           on_open=tune_sqlite_for_bulk_writes)
        self.receiver = Receiver(self.writer, self.config)
        self._http = None
        self._http_thread: threading.Thread | None = None
        self._grpc = None
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._stopped = False

    @property
    def store(self) -> Store:
        return self.writer.store

    def start(self) -> Self:
        from gepa_trace.collectors.otlp_http import OTLPHTTPServer

        cfg = self.config
        tune_sqlite_for_bulk_writes(self.store)
        port = cfg.http_port
        try:
            if cfg.http_port is not None:
                self._http = OTLPHTTPServer((cfg.host, cfg.http_port), self.receiver)
                self.http_port = self._http.port
                self.receiver.open_connections = self._http.connection_count
                self._http_thread = threading.Thread(
                    target=self._http.serve_forever, kwargs={"poll_interval": 0.2},
                    name="otlp-http", daemon=True)
                self._http_thread.start()
            if cfg.grpc_port is not None:
                from gepa_trace.collectors.otlp_grpc import start_grpc_server

                port = cfg.grpc_port
                self._grpc, self.grpc_port = start_grpc_server(self.receiver, cfg.host,
                                                               cfg.grpc_port)
        except OSError as exc:
            self.stop(grace=0)
            raise ConfigError(f"cannot listen on {cfg.host}:{port}: "
                              f"{exc.strerror or exc}") from exc
        return self

    def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, finish the accepted requests (up to ``grace`` s), close."""
        if self._stopped:
            return
        self._stopped = True
        self.receiver.accepting = False
        if self._http is not None:
            self._http.shutdown()  # no new connections; open ones get 503
            self._http.server_close()
        grpc_done = self._grpc.stop(grace) if self._grpc is not None else None
        # Requests already handed to the writer finish and commit before we close it.
        if not wait_until(lambda: self.receiver.busy_requests == 0, grace):
            log.warning("%d requests still running after %ss", self.receiver.busy_requests,
                        grace)
        if grpc_done is not None:
            grpc_done.wait(grace)
        self.writer.close(timeout=grace)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- files -----------------------------------------------------------------------------

@dataclass
class IngestReport:
    files: int = 0
    requests: int = 0
    spans: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "requests": self.requests, "spans": self.spans,
                "rejected": self.rejected, "errors": list(self.errors)}


def read_otlp_file(path: Path) -> list[tuple[ExportTraceServiceRequest, Decoded]]:
    """The parsed requests of one file, each with the spans rejected while decoding it;
    raises RequestError naming what is wrong.

    JSON: the whole file is one request, or each non-empty line is one. Anything that
    does not start with ``{`` is read as one protobuf ExportTraceServiceRequest.
    """
    raw = path.read_bytes()
    head = raw.lstrip()[:1]
    if head == b"{":
        try:
            return [decode_json(raw)]
        except RequestError as whole_error:
            lines = [line for line in raw.splitlines() if line.strip()]
            if len(lines) < 2:
                raise
            out = []
            for number, line in enumerate(lines, 1):
                try:
                    out.append(decode_json(line))
                except RequestError as exc:
                    if number == 1:  # not JSON lines either: one broken request
                        raise whole_error from None
                    raise RequestError(400, f"line {number}: {exc.message}") from None
            return out
    if not raw:
        raise RequestError(400, "file is empty")
    request = decode_protobuf(raw)
    if not request.resource_spans:
        # protobuf parses many byte strings as unknown fields; no spans means not OTLP
        raise RequestError(400, "not an OTLP trace request (no resourceSpans)")
    return [(request, Decoded())]


def ingest_files(store: Store, paths: list[str | Path], *, batch_spans: int = 5000,
                 progress: Any = None) -> IngestReport:
    """Load OTLP files into the store, ``batch_spans`` spans a transaction at most (a
    request is not split). A bad file is reported and skipped, not fatal; spans with
    invalid ids or times are counted in ``rejected`` and their reasons logged."""
    report = IngestReport()
    for name in paths:
        path = Path(name)
        try:
            requests = read_otlp_file(path)
        except OSError as exc:
            report.errors.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        except RequestError as exc:
            report.errors.append(f"{path}: {_kind_of(path)}: {exc.message}")
            continue
        report.files += 1
        pending: list[PreparedSpans] = []
        rows = file_rows = 0
        for request, decoded in requests:
            report.requests += 1
            batches = prepared_batches(request, decoded)
            report.rejected += decoded.rejected
            for reason in decoded.reasons:
                log.warning("%s: rejected spans: %s", path, reason)
            pending += batches
            rows += sum(len(b.rows) for b in batches)
            if rows >= batch_spans:
                report.spans += write_prepared(store, pending)
                file_rows += rows
                pending, rows = [], 0
        if pending:
            report.spans += write_prepared(store, pending)
            file_rows += rows
        if progress is not None:
            progress(f"{path}: {file_rows} spans")
    return report


def _kind_of(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            return "OTLP/JSON" if fh.read(64).lstrip()[:1] == b"{" else "OTLP/protobuf"
    except OSError:
        return "file"


__all__ = [
    "JSON",
    "PROTOBUF",
    "Collector",
    "CollectorConfig",
    "IngestReport",
    "Receiver",
    "ingest_files",
    "read_otlp_file",
    "tune_process_for_ingest",
]
