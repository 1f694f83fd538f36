"""The OTLP/HTTP and OTLP/gRPC receiver: answers, status codes, what gets stored."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import threading
import time

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from gepa_trace.collectors.otlp import Collector, CollectorConfig
from gepa_trace.collectors.otlp_writer import SpanWriter
from gepa_trace.store import open_store

PB = "application/x-protobuf"


def make_request(n: int, seed: int = 0, **span_fields) -> ExportTraceServiceRequest:
    spans = []
    for i in range(n):
        fields = {"trace_id": (seed * 1_000_000 + i + 1).to_bytes(16, "big"),
                  "span_id": (i + 1).to_bytes(8, "big"), "name": f"s{i}",
                  "start_time_unix_nano": 1000 + i, "end_time_unix_nano": 2000 + i,
                  "attributes": [KeyValue(key="openinference.span.kind",
                                          value=AnyValue(string_value="LLM")),
                                 KeyValue(key="llm.model_name",
                                          value=AnyValue(string_value="m"))]}
        fields.update(span_fields)
        spans.append(Span(**fields))
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource={"attributes": [KeyValue(key="service.name",
                                          value=AnyValue(string_value="svc"))]},
        scope_spans=[ScopeSpans(spans=spans)])])


def post(port, body, ctype=PB, path="/v1/traces", headers=None, method="POST"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body, {"Content-Type": ctype, **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def count_spans(store) -> int:
    with store.read() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM spans")).scalar()


@pytest.fixture
def collector(store_url):
    store = open_store(store_url)
    c = Collector(store, CollectorConfig(http_port=0, grpc_port=0, token=None,
                                         max_body_bytes=200_000)).start()
    yield c
    c.stop(grace=5)


def test_protobuf_export_is_stored_before_the_protobuf_200(collector):
    response, data = post(collector.http_port, make_request(3).SerializeToString())
    assert response.status == 200
    assert response.getheader("Content-Type") == PB
    assert not ExportTraceServiceResponse.FromString(data).HasField("partial_success")
    assert count_spans(collector.store) == 3  # no wait: 200 means committed


def test_json_export_gets_a_json_answer_and_gzip_is_accepted(collector):
    from google.protobuf import json_format

    body = json.loads(json_format.MessageToJson(make_request(2)))
    for span in body["resourceSpans"][0]["scopeSpans"][0]["spans"]:  # OTLP/JSON ids: hex
        for key in ("traceId", "spanId"):
            span[key] = __import__("base64").b64decode(span[key]).hex()
    response, data = post(collector.http_port, gzip.compress(json.dumps(body).encode()),
                          ctype="application/json", headers={"Content-Encoding": "gzip"})
    assert response.status == 200, data
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(data) == {}
    assert count_spans(collector.store) == 2


def test_partial_success_names_the_rejected_spans(collector):
    request = make_request(2)
    request.resource_spans[0].scope_spans[0].spans.extend(
        [Span(span_id=b"\x05" * 8, name="no trace"),
         Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 3, name="short id")])
    response, data = post(collector.http_port, request.SerializeToString())
    assert response.status == 200
    partial = ExportTraceServiceResponse.FromString(data).partial_success
    assert partial.rejected_spans == 2
    assert "trace id" in partial.error_message and "span id of 3 bytes" in partial.error_message
    assert count_spans(collector.store) == 2


def test_battery_of_bad_requests_gets_documented_statuses_and_loses_nothing(store_url):
    store = open_store(store_url)
    config = CollectorConfig(http_port=0, grpc_port=None, token="s3cret",
                             max_body_bytes=50_000)
    auth = {"Authorization": "Bearer s3cret"}
    with Collector(store, config) as c:
        port = c.http_port
        good = make_request(5).SerializeToString()
        assert post(port, good, headers=auth)[0].status == 200
        battery = [
            ("truncated protobuf", good[:-7], PB, auth, 400),
            ("random bytes", os.urandom(3000), PB, auth, 400),
            ("invalid json", b'{"resourceSpans": [', "application/json", auth, 400),
            ("wrong content type", good, "text/plain", auth, 415),
            ("oversized body", b"\0" * 60_000, PB, auth, 413),
            ("no token", good, PB, {}, 401),
            ("bad token", good, PB, {"Authorization": "Bearer nope"}, 401),
            ("unknown path", good, PB, auth | {"X": "1"}, 404),
        ]
        for label, body, ctype, headers, status in battery:
            path = "/v1/nothing" if label == "unknown path" else "/v1/traces"
            response, data = post(port, body, ctype=ctype, headers=headers, path=path)
            assert response.status == status, label
            if status in (400, 413, 415, 401) and ctype == PB:
                status_pb2.Status.FromString(data)  # a google.rpc.Status body
        wrong_ids = make_request(1, seed=9)
        wrong_ids.resource_spans[0].scope_spans[0].spans.extend([
            Span(trace_id=b"\x07" * 20, span_id=b"\x07" * 8, name="long trace id"),
            Span(span_id=b"\x08" * 8, name="no trace id")])
        response, data = post(port, wrong_ids.SerializeToString(), headers=auth)
        assert response.status == 200
        assert ExportTraceServiceResponse.FromString(data).partial_success.rejected_spans == 2
        response, _ = post(port, b"", method="GET", path="/healthz")
        assert response.status == 200  # still up
        assert post(port, make_request(2, seed=3).SerializeToString(),
                    headers=auth)[0].status == 200
        assert count_spans(store) == 5 + 1 + 2


def test_busy_writer_answers_429_with_retry_after(store_url):
    store = open_store(store_url)
    release = threading.Event()

    def slow_commit(store, batches):
        release.wait(10)
        from gepa_trace.store.spans import write_prepared

        return write_prepared(store, batches)

    writer = SpanWriter(store, max_pending_spans=5, commit=slow_commit)
    with Collector(store, CollectorConfig(http_port=0, grpc_port=None), writer=writer) as c:
        first = threading.Thread(target=post,
                                 args=(c.http_port, make_request(5).SerializeToString()))
        first.start()
        deadline = time.monotonic() + 5
        while writer.pending_spans < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        response, _ = post(c.http_port, make_request(3, seed=1).SerializeToString())
        assert response.status == 429
        assert int(response.getheader("Retry-After")) >= 1
        release.set()
        first.join(10)
        assert count_spans(store) == 5


def test_metrics_and_logs_are_accepted_and_discarded_and_health_answers(collector):
    for path in ("/v1/metrics", "/v1/logs"):
        response, data = post(collector.http_port, b"", path=path)
        assert response.status == 200 and data == b""
        response, data = post(collector.http_port, b"{}", ctype="application/json", path=path)
        assert response.status == 200 and json.loads(data) == {}
    response, data = post(collector.http_port, None, method="GET", path="/healthz")
    assert response.status == 200 and json.loads(data)["status"] == "ok"
    assert count_spans(collector.store) == 0


def test_feedback_endpoint_records_feedback_on_a_stored_trace(collector):
    post(collector.http_port, make_request(1).SerializeToString())
    trace_id = (1).to_bytes(16, "big").hex()
    body = json.dumps({"trace_id": trace_id, "score": 0.0, "comment": "wrong country"})
    response, data = post(collector.http_port, body.encode(), ctype="application/json",
                          path="/v1/feedback")
    assert response.status == 200, data
    with collector.store.read() as conn:
        row = conn.execute(sa.text("SELECT trace_id, score, comment FROM feedback")).one()
    assert tuple(row) == (trace_id, 0.0, "wrong country")
    unknown = json.dumps({"trace_id": "ab" * 16, "score": 1.0}).encode()
    assert post(collector.http_port, unknown, ctype="application/json",
                path="/v1/feedback")[0].status == 404
    bad = json.dumps({"trace_id": trace_id, "stars": 5}).encode()
    assert post(collector.http_port, bad, ctype="application/json",
                path="/v1/feedback")[0].status == 400


def test_grpc_export_stores_spans_and_reports_partial_success(collector):
    channel = grpc.insecure_channel(f"127.0.0.1:{collector.grpc_port}")
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    request = make_request(4)
    request.resource_spans[0].scope_spans[0].spans.append(Span(span_id=b"\x01" * 8))
    response = stub.Export(request, timeout=10)
    assert response.partial_success.rejected_spans == 1
    assert count_spans(collector.store) == 4
    channel.close()


def test_grpc_undecodable_message_is_invalid_argument_and_server_stays_up(collector):
    channel = grpc.insecure_channel(f"127.0.0.1:{collector.grpc_port}")
    raw = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    good = make_request(2).SerializeToString()
    for garbage in (good[:-5], b"\xff" * 40):
        with pytest.raises(grpc.RpcError) as info:
            raw(garbage, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(raw(good, timeout=10))
    assert response.partial_success.rejected_spans == 0
    assert count_spans(collector.store) == 2
    channel.close()


def test_grpc_export_without_a_message_is_invalid_argument(collector):
    channel = grpc.insecure_channel(f"127.0.0.1:{collector.grpc_port}")
    no_message = channel.stream_unary(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    with pytest.raises(grpc.RpcError) as info:
        no_message(iter(()), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "one ExportTraceServiceRequest" in info.value.details()
    channel.close()


def test_grpc_requires_the_token_and_refuses_oversized_messages(store_url):
    store = open_store(store_url)
    config = CollectorConfig(http_port=None, grpc_port=0, token="tok",
                             max_grpc_message_bytes=20_000)
    with Collector(store, config) as c:
        channel = grpc.insecure_channel(f"127.0.0.1:{c.grpc_port}")
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Export(make_request(1), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            stub.Export(make_request(1), timeout=10, metadata=(("authorization", "Bearer x"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        big = make_request(400)
        with pytest.raises(grpc.RpcError) as info:
            stub.Export(big, timeout=10, metadata=(("authorization", "Bearer tok"),))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        stub.Export(make_request(2), timeout=10, metadata=(("authorization", "Bearer tok"),))
        assert count_spans(store) == 2
        channel.close()


def test_retried_request_is_stored_once(collector):
    body = make_request(10).SerializeToString()
    for _ in range(3):
        assert post(collector.http_port, body)[0].status == 200
    assert count_spans(collector.store) == 10


def test_json_reply_for_json_errors_and_protobuf_reply_for_protobuf_errors(collector):
    response, data = post(collector.http_port, b"{oops", ctype="application/json")
    assert response.status == 400 and response.getheader("Content-Type") == "application/json"
    assert json.loads(data)["code"] == 3
    response, data = post(collector.http_port, b"\xff\xff\xff", ctype=PB)
    assert response.status == 400 and response.getheader("Content-Type") == PB
    assert status_pb2.Status.FromString(data).code == 3


def test_chunked_bodies_are_read_and_bounded(collector):
    body = make_request(3).SerializeToString()
    conn = http.client.HTTPConnection("127.0.0.1", collector.http_port, timeout=30)
    conn.request("POST", "/v1/traces", iter([body[:10], body[10:]]),
                 {"Content-Type": PB}, encode_chunked=True)
    assert conn.getresponse().status == 200
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", collector.http_port, timeout=30)
    conn.request("POST", "/v1/traces", iter([b"\0" * 150_000, b"\0" * 150_000]),
                 {"Content-Type": PB}, encode_chunked=True)
    assert conn.getresponse().status == 413  # the limit is 200,000 bytes
    conn.close()
    assert count_spans(collector.store) == 3


def test_an_oversized_chunked_body_is_read_to_its_end_and_the_connection_kept(collector):
    """The client may still be sending when the limit is passed: it must read the 413,
    not a broken pipe, and can go on using the connection."""
    conn = http.client.HTTPConnection("127.0.0.1", collector.http_port, timeout=30)
    conn.request("POST", "/v1/traces", iter([b"\0" * 150_000] * 8),
                 {"Content-Type": PB}, encode_chunked=True)
    response = conn.getresponse()
    response.read()
    assert response.status == 413
    conn.request("POST", "/v1/traces", make_request(2).SerializeToString(),
                 {"Content-Type": PB})
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    conn.close()
    assert count_spans(collector.store) == 2


def test_a_stopping_collector_answers_503_with_retry_after(collector):
    collector.receiver.accepting = False  # what stop() sets first
    response, data = post(collector.http_port, make_request(1).SerializeToString())
    assert response.status == 503 and response.getheader("Retry-After")
    assert status_pb2.Status.FromString(data).code == 14  # UNAVAILABLE
    collector.receiver.accepting = True


def test_refused_requests_keep_the_connection_usable(collector):
    """A refused body is drained, so a keep-alive client reads the answer and goes on."""
    conn = http.client.HTTPConnection("127.0.0.1", collector.http_port, timeout=30)
    for body, ctype, status in [(b"\0" * 250_000, PB, 413), (b"x" * 1000, "text/plain", 415),
                                (make_request(2).SerializeToString(), PB, 200)]:
        conn.request("POST", "/v1/traces", body, {"Content-Type": ctype})
        response = conn.getresponse()
        response.read()
        assert response.status == status
    conn.close()
    assert count_spans(collector.store) == 2
