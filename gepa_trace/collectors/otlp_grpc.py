"""OTLP/gRPC: ``TraceService/Export`` with the same semantics as OTLP/HTTP.

Status codes (the gRPC counterparts of the HTTP answers):
- OK + ExportTraceServiceResponse (``partial_success`` when spans were rejected or flagged), sent
  only after the spans are committed;
- UNAUTHENTICATED: missing or wrong ``authorization: Bearer`` metadata;
- RESOURCE_EXHAUSTED: a message over ``--max-grpc-message-mb`` (default 4 MiB, the
  OpenTelemetry Collector's ``max_recv_msg_size_mib``), sent plain or larger once
  inflated; more RPCs at once than ``grpc_workers``; or a request whose spans (counted
  from its framing, before it is parsed) alone would exceed the memory bound
  (``admission.TooLarge``);
- UNAVAILABLE with ``retry-after`` metadata: the writer is behind, or the request does
  not fit in the memory left for requests in flight (``admission``: the message's size
  and its spans, counted from its framing, are taken before it is parsed);
- UNAVAILABLE: the database is unavailable, the commit did not finish before the
  request timeout, or shutting down (OTLP exporters retry UNAVAILABLE with backoff);
- INVALID_ARGUMENT: a message that is not an ExportTraceServiceRequest (the service
  takes raw bytes and decodes them itself, so that this is not gRPC's INTERNAL);
- INTERNAL: the database refused the spans for a reason a retry will not fix.
Metrics and logs services accept and discard, as over HTTP.

The message limit (``--max-grpc-message-mb``, separate from HTTP's ``--max-body-mb``) is
grpc's ``grpc.max_receive_message_length``, checked in C before the message is copied
into Python: grpc's Cython layer copies each message into Python bytes holding the GIL,
and under a flood of 15 MB messages that copy and the span count stalled every other
thread, ``/healthz`` included. grpc applies the limit to a gzip message as it inflates
it, and holds at most ``grpc_workers`` messages, inflated (64 MB with the defaults),
before the service admits them. A 4 MiB message of tiny spans (85k) takes about 176 MB
of the memory bound once admitted; its rows are built with no span dict in between, and
a span refused for its ids or times is never built at all.

What a client over the limit reads is grpc's own text, naming the limit in bytes but
not the flag: "SERVER: Received message larger than max (4400018 vs. 4194304)", or, for
gzip, "Decompressed message larger than max". (The Python OTLP exporter counts
RESOURCE_EXHAUSTED as retryable: it resends the batch until its 10 s timeout, then drops
it; its default batch of 512 spans is far under 4 MiB.) The service only learns that the
call ended without a message, so the server logs a line naming the flag, and the other
possible cause, a client that cancelled: the first at once, then at most one a minute
with a count (``MessagesNotReceived``). grpc does not always hand such a call to the
service (one full test-suite run saw no line within 20 s), so the line is a hint that
refusals happen, not a count of every one.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import TYPE_CHECKING

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from gepa_trace.collectors.admission import INFLATE_FACTOR, OverBudget, TooLarge
from gepa_trace.collectors.otlp_decode import (
    PROTOBUF,
    Decoded,
    RequestError,
    decode_protobuf,
)
from gepa_trace.collectors.otlp_writer import WriteFailed, WriterBusy, WriterClosed

if TYPE_CHECKING:
    from gepa_trace.collectors.otlp import Receiver

log = logging.getLogger(__name__)

#: at most one log line per this many seconds about calls that ended without a message
REPEAT_LOG_S = 60.0


def _authorize(receiver: Receiver, context: grpc.ServicerContext) -> None:
    if receiver.token is None:
        return
    header = next((v for k, v in context.invocation_metadata() if k == "authorization"), None)
    if not receiver.authorized(header):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


class MessagesNotReceived:
    """Counts Export calls that grpc ended before their message reached the service (over
    the message limit, or cancelled by the client): the first is logged at once, the
    next at most once per ``every_s``, with how many there were since. Thread-safe."""

    def __init__(self, limit_bytes: int, every_s: float = REPEAT_LOG_S):
        self.limit_bytes, self.every_s = limit_bytes, every_s
        self.count = 0
        self._unlogged = 0
        self._logged_at: float | None = None
        self._lock = threading.Lock()

    def happened(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.count += 1
            self._unlogged += 1
            if self._logged_at is not None and now - self._logged_at < self.every_s:
                return
            count, self._unlogged, self._logged_at = self._unlogged, 0, now
        log.warning("gRPC: %d Export call(s) ended before their message was received: "
                    "larger than %g MiB once inflated (--max-grpc-message-mb; grpc "
                    "answered RESOURCE_EXHAUSTED), or cancelled by the client", count,
                    self.limit_bytes / 2**20)


class _TraceService:
    """Export, taken as a client stream so that a call grpc ends before its message
    arrives (over the limit) still reaches the service, to be counted and logged; on
    the wire a unary call and a one-message client stream are the same."""

    def __init__(self, receiver: Receiver):
        self.receiver = receiver
        self.not_received = MessagesNotReceived(receiver.config.max_grpc_message_bytes)

    def Export(self, messages: Iterator[bytes], context):
        try:
            body = next(messages, None)
        except grpc.RpcError:  # grpc ended the call: no answer of ours reaches the client
            body = None
        if body is None:
            if context.is_active():
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              "Export takes one ExportTraceServiceRequest message")
            self.not_received.happened()
            return trace_service_pb2.ExportTraceServiceResponse()
        receiver = self.receiver
        deadline = time.monotonic() + receiver.config.request_timeout_s
        with receiver.in_flight(), receiver.budget.ticket() as ticket:
            _authorize(receiver, context)
            if not receiver.accepting:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the collector is shutting down")
            try:
                ticket.take(len(body) * INFLATE_FACTOR[PROTOBUF])
                request = decode_protobuf(body, ticket)
                del body
            except RequestError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
            except OverBudget as exc:
                context.set_trailing_metadata((("retry-after", str(exc.retry_after)),))
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            except TooLarge as exc:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            try:
                return self._store(request, deadline, context)
            finally:  # within the ticket, which counts the request until it is freed
                del request

    def _store(self, request, deadline: float, context
               ) -> trace_service_pb2.ExportTraceServiceResponse:
        decoded = Decoded()
        try:
            self.receiver.export(request, decoded, deadline)
        except WriterBusy as exc:
            context.set_trailing_metadata((("retry-after", str(exc.retry_after)),))
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except WriterClosed as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except TimeoutError:
            context.abort(grpc.StatusCode.UNAVAILABLE, "spans not committed within the "
                          "request timeout; they may be stored, a retry stores no duplicate")
        except WriteFailed as exc:
            code = grpc.StatusCode.UNAVAILABLE if exc.retryable else grpc.StatusCode.INTERNAL
            context.abort(code, str(exc))
        response = trace_service_pb2.ExportTraceServiceResponse()
        if decoded.rejected or decoded.warnings:  # a warning: 0 rejected, with the message
            response.partial_success.rejected_spans = decoded.rejected
            response.partial_success.error_message = decoded.error_message
        return response


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: Receiver):
        self.receiver = receiver

    def Export(self, request, context):
        _authorize(self.receiver, context)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _LogsService(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: Receiver):
        self.receiver = receiver

    def Export(self, request, context):
        _authorize(self.receiver, context)
        return logs_service_pb2.ExportLogsServiceResponse()


def start_grpc_server(receiver: Receiver, host: str, port: int) -> tuple[grpc.Server, int]:
    """A started gRPC server and the port it bound (``port`` 0 picks a free one)."""
    limit = int(min(receiver.config.max_grpc_message_bytes, 2**31 - 1))
    workers = receiver.config.grpc_workers
    # maximum_concurrent_rpcs: RPCs past the workers would wait with their message in
    # memory, uncounted; they get RESOURCE_EXHAUSTED at once instead (clients retry it)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                    thread_name_prefix="otlp-grpc"),
                         maximum_concurrent_rpcs=workers,
                         options=[("grpc.max_receive_message_length", limit),
                                  # shared only by the processes of --workers
                                  ("grpc.so_reuseport", int(receiver.config.reuse_port))])
    service = _TraceService(receiver)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.stream_unary_rpc_method_handler(
            service.Export, request_deserializer=None,  # raw bytes: we decode
            response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString)}),))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(receiver),
                                                                  server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsService(receiver), server)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(target)
    except RuntimeError:  # grpc's own words name no cause; its log line says which
        bound = 0
    if bound == 0:
        raise OSError(errno.EADDRINUSE, "address in use, or not available here")
    server.start()
    return server, bound
