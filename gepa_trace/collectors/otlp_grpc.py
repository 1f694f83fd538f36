"""OTLP/gRPC: ``TraceService/Export`` with the same semantics as OTLP/HTTP.

Status codes (the gRPC counterparts of the HTTP answers):
- OK + ExportTraceServiceResponse (``partial_success`` when spans were rejected or flagged), sent
  only after the spans are committed;
- UNAUTHENTICATED: missing or wrong ``authorization: Bearer`` metadata;
- RESOURCE_EXHAUSTED: message over ``--max-body-mb`` (enforced by gRPC itself);
- UNAVAILABLE: the writer is behind, the database is unavailable, or shutting down
  (OTLP exporters retry UNAVAILABLE with backoff);
- INVALID_ARGUMENT: a message that is not an ExportTraceServiceRequest (the service
  takes raw bytes and decodes them itself, so that this is not gRPC's INTERNAL);
- INTERNAL: the database refused the spans for a reason a retry will not fix.
Metrics and logs services accept and discard, as over HTTP.
"""

from __future__ import annotations

from concurrent import futures
from typing import TYPE_CHECKING

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from gepa_trace.collectors.otlp_decode import RequestError, decode_protobuf, spans_of
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
        with receiver.in_flight():
            _authorize(receiver, context)
            if not receiver.accepting:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the collector is shutting down")
            try:
                decoded = spans_of(decode_protobuf(body))
            except RequestError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
            try:
                receiver.export(decoded)
            except WriterBusy as exc:
                context.set_trailing_metadata((("retry-after", str(exc.retry_after)),))
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            except WriterClosed as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            except (WriteFailed, TimeoutError) as exc:
                code = (grpc.StatusCode.UNAVAILABLE if getattr(exc, "retryable", True)
                        else grpc.StatusCode.INTERNAL)
                context.abort(code, str(exc) or "write timed out")
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


def start_grpc_server(receiver: Receiver, host: str, port: int,
                      workers: int = 16) -> tuple[grpc.Server, int]:
    """A started gRPC server and the port it bound (``port`` 0 picks a free one)."""
    limit = int(min(receiver.max_body_bytes, 2**31 - 1))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                    thread_name_prefix="otlp-grpc"),
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
