"""OTLP/gRPC: ``TraceService/Export`` with the same semantics as OTLP/HTTP.

Status codes (the gRPC counterparts of the HTTP answers):
- OK + ExportTraceServiceResponse (``partial_success`` when spans were rejected or flagged), sent
  only after the spans are committed;
- UNAUTHENTICATED: missing or wrong ``authorization: Bearer`` metadata;
- RESOURCE_EXHAUSTED: message over ``--max-body-mb``, compressed or once inflated
  (enforced by gRPC itself, which inflates gzip messages and holds them, at most
  ``grpc_workers`` at once, before the service sees them), more RPCs at once than
  ``grpc_workers``, or a request whose spans (counted from its framing, before it is
  parsed) alone would exceed the memory bound (``admission.TooLarge``);
- UNAVAILABLE with ``retry-after`` metadata: the writer is behind, or the request does
  not fit in the memory left for requests in flight (``admission``: the message's size
  and its spans, counted from its framing, are taken before it is parsed);
- UNAVAILABLE: the database is unavailable, the commit did not finish before the
  request timeout, or shutting down (OTLP exporters retry UNAVAILABLE with backoff);
- INVALID_ARGUMENT: a message that is not an ExportTraceServiceRequest (the service
  takes raw bytes and decodes them itself, so that this is not gRPC's INTERNAL);
- INTERNAL: the database refused the spans for a reason a retry will not fix.
Metrics and logs services accept and discard, as over HTTP.
"""

from __future__ import annotations

import time
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
    RequestError,
    decode_protobuf,
    spans_of,
)
from gepa_trace.collectors.otlp_writer import WriteFailed, WriterBusy, WriterClosed

if TYPE_CHECKING:
    from gepa_trace.collectors.otlp import Receiver


def _authorize(receiver: Receiver, context: grpc.ServicerContext) -> None:
    if receiver.token is None:
        return
    header = next((v for k, v in context.invocation_metadata() if k == "authorization"), None)
    if not receiver.authorized(header):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


class _TraceService:
    def __init__(self, receiver: Receiver):
        self.receiver = receiver

    def Export(self, body: bytes, context):
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
                decoded = spans_of(request)
                del request
            except RequestError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
            except OverBudget as exc:
                context.set_trailing_metadata((("retry-after", str(exc.retry_after)),))
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            except TooLarge as exc:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            try:
                receiver.export(decoded, deadline)
            except WriterBusy as exc:
                context.set_trailing_metadata((("retry-after", str(exc.retry_after)),))
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            except WriterClosed as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            except TimeoutError:
                context.abort(grpc.StatusCode.UNAVAILABLE, "spans not committed within the "
                              "request timeout; they may be stored, a retry stores no "
                              "duplicate")
            except WriteFailed as exc:
                code = (grpc.StatusCode.UNAVAILABLE if exc.retryable
                        else grpc.StatusCode.INTERNAL)
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
    limit = int(min(receiver.max_body_bytes, 2**31 - 1))
    workers = receiver.config.grpc_workers
    # maximum_concurrent_rpcs: RPCs past the workers would wait with their message in
    # memory, uncounted; they get RESOURCE_EXHAUSTED at once instead (clients retry it)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                    thread_name_prefix="otlp-grpc"),
                         maximum_concurrent_rpcs=workers,
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.so_reuseport", 0)])
    service = _TraceService(receiver)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(
            service.Export, request_deserializer=None,  # raw bytes: we decode
            response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString)}),))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(receiver),
                                                                  server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsService(receiver), server)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(target)
    if bound == 0:
        raise OSError(f"cannot bind the OTLP/gRPC port {target}")
    server.start()
    return server, bound
