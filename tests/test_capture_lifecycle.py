"""instrument()'s lifecycle: the extra OTLP export, and the flush at interpreter exit."""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from test_capture_agent import span_rows

import gepa_trace as gt

ROOT = Path(__file__).resolve().parent.parent


class OtlpSink:
    """A loopback OTLP/HTTP receiver that keeps the names and agents of the spans sent."""

    def __init__(self):
        received: list[tuple[str, str]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            attrs = {a.key: a.value.string_value for a in span.attributes}
                            received.append((span.name, attrs.get("gepa.agent", "")))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_otlp_endpoint_receives_the_same_spans_as_the_store(sqlite_url):
    sink = OtlpSink()
    inst = gt.instrument(store=sqlite_url, service_name="otlp-agent", otlp_endpoint=sink.url)
    try:
        GenericFakeChatModel(messages=iter(["a"])).invoke("hi")
        with gt.agent_run("otlp-agent"):
            GenericFakeChatModel(messages=iter(["b"])).invoke("hi")
        assert inst.force_flush()
    finally:
        inst.shutdown()
        sink.close()
    stored = sorted((r["name"], r["agent"]) for r in span_rows(sqlite_url))
    assert sorted(sink.received) == stored and len(stored) == 3


def test_otlp_endpoint_must_be_a_url(sqlite_url):
    from gepa_trace.errors import ConfigError

    with pytest.raises(ConfigError, match="otlp_endpoint"):
        gt.instrument(store=sqlite_url, otlp_endpoint="localhost:4318")


def test_spans_still_queued_at_exit_are_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'exit.db'}"
    script = textwrap.dedent(f"""
        import gepa_trace as gt
        from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
        gt.instrument(store={url!r}, service_name="exiting")
        for i in range(5):
            GenericFakeChatModel(messages=iter(["a"])).invoke("hi")
        # no shutdown(): the export delay has not passed; atexit must flush
    """)
    env = {"GEPA_TRACE_EXPORT_DELAY_MS": "60000", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, env=env,
                   timeout=120)
    rows = span_rows(url)
    assert [(r["span_type"], r["agent"]) for r in rows] == [("llm", "exiting")] * 5
    from gepa_trace.store import forget_store

    forget_store(url)


def test_instrument_checks_its_arguments(sqlite_url):
    with pytest.raises(ValueError, match="redact"):
        gt.instrument(store=sqlite_url, redact="not callable")
    with pytest.raises(ValueError, match="service_name"):
        gt.instrument(store=sqlite_url, service_name="")


def test_grpc_otlp_endpoint_is_used_when_the_url_says_so(sqlite_url):
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    names: list[str] = []

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            names.extend(s.name for rs in request.resource_spans
                         for ss in rs.scope_spans for s in ss.spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    inst = gt.instrument(store=sqlite_url, service_name="grpc-agent",
                         otlp_endpoint=f"grpc://127.0.0.1:{port}")
    try:
        GenericFakeChatModel(messages=iter(["a"])).invoke("hi")
        assert inst.force_flush()
    finally:
        inst.shutdown()
        server.stop(0)
    assert names == ["GenericFakeChatModel"]
