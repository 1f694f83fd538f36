"""The rows the collector stores for one fixed OTLP request, pinned byte for byte.

The collector's decode and prepare path is tuned for speed (issue 19); whatever is
changed there, a stored span must stay exactly what it was: the same JSON text of its
attributes, events and resource (key order, separators, floats, non-ASCII), the same
derived columns, the same prompt versions. The expected rows are in
``fixtures/otlp_stored_rows.json``; after a deliberate change of the stored form,
regenerate them with ``python tests/test_otlp_stored_rows.py`` (it rewrites the file)
and say why in the commit.
"""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from gepa_trace.collectors.otlp import Collector, CollectorConfig
from gepa_trace.store import forget_store, open_store

FIXTURE = Path(__file__).parent / "fixtures" / "otlp_stored_rows.json"
LINKED = Path(__file__).parent / "fixtures" / "otlp_linked_rows.json"
T0 = 1_700_000_000_000_000_000
TEMPLATE = json.dumps([{"role": "system", "content": "You plan trips."}])


def _value(v) -> AnyValue:
    if v is None:
        return AnyValue()
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[_value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=_kvs(v.items())))
    return AnyValue(string_value=v)


def _kvs(pairs) -> list[KeyValue]:
    return [KeyValue(key=k, value=_value(v)) for k, v in pairs]


def _span(n: int, attributes, **fields) -> Span:
    base = {"trace_id": bytes([n % 3 + 1]) * 16, "span_id": bytes([n + 1]) * 8,
            "name": f"span-{n}", "kind": n % 6, "start_time_unix_nano": T0 + n * 1000,
            "end_time_unix_nano": T0 + n * 1000 + 500}
    base.update(fields)
    return Span(attributes=_kvs(attributes), **base)


def request() -> trace_service_pb2.ExportTraceServiceRequest:
    """Every attribute type and the conventions the derived columns read."""
    template_version = _prompt_version()
    spans = [
        _span(0, [("str", "plain"), ("unicode", "é ünï 😀 \"quoted\" \\ back\nline"),
                  ("int", 7), ("big", 2**62), ("neg", -5), ("zero", 0),
                  ("float", 0.1), ("small", 1e-07), ("large", 1e16), ("half", 1.5),
                  ("nan", float("nan")), ("inf", float("inf")), ("true", True),
                  ("false", False), ("empty", ""), ("none", None), ("bytes", b"\x00\xff"),
                  ("array", [1, "two", 3.0, False, None, [4]]),
                  ("map", {"k": "v", "nested": {"n": 1}, "list": ["a"]}),
                  ("dup", "first"), ("other", 1), ("dup", "second")],
              parent_span_id=b"\x09" * 8,
              status=Status(code=2, message="boom"),
              events=[Span.Event(time_unix_nano=T0 + 10, name="exception", attributes=_kvs(
                  [("exception.type", "ValueError"), ("exception.message", "bad ✗")])),
                  Span.Event(time_unix_nano=T0 + 20, name="bare")]),
        _span(1, [("openinference.span.kind", "PROMPT"), ("input.value", "Paris?"),
                  ("output.value", json.dumps({"messages": [
                      {"type": "system", "content": "You plan trips. Be brief."}]})),
                  ("llm.prompt_template.template", "You plan trips. Be brief."),
                  ("metadata", json.dumps({"langgraph_node": "planner",
                                           "langgraph_step": 1}))],
              name="ChatPromptTemplate", parent_span_id=b"\x03" * 8),
        _span(2, [("openinference.span.kind", "LLM"),
                  ("llm.input_messages.0.message.role", "system"),
                  ("llm.input_messages.0.message.content", "You plan trips. Be brief."),
                  ("llm.output_messages.0.message.content", "Lisbon."),
                  ("llm.model_name", "gpt-4.1-mini"), ("llm.token_count.prompt", 31),
                  ("llm.token_count.completion", 7), ("llm.invocation_parameters",
                                                      '{"temperature": 0.2}'),
                  ("metadata", json.dumps({"langgraph_node": "planner"}))],
              name="ChatOpenAI", parent_span_id=b"\x03" * 8),
        _span(3, [("gepa.agent", "trip-agent"), ("gepa.component", "planner"),
                  ("gepa.prompt.version", template_version),
                  ("gepa.prompt.template", TEMPLATE), ("gepa.run.id", "run-1"),
                  ("openinference.span.kind", "LLM"), ("gen_ai.request.model", "m-1"),
                  ("gen_ai.usage.input_tokens", 3), ("gen_ai.usage.output_tokens", 4)]),
        _span(4, [("gepa.agent", "trip-agent"), ("gepa.component", "planner"),
                  ("gepa.prompt.version", "not-its-hash"), ("gepa.prompt.template", TEMPLATE),
                  ("openinference.span.kind", "LLM")]),
        _span(5, [("gen_ai.operation.name", "chat"),
                  ("gen_ai.system_instructions", '[{"type": "text", "content": "Be kind."}]'),
                  ("gen_ai.response.model", "m-2"), ("gen_ai.agent.name", "genai-agent")],
              end_time_unix_nano=0),
        _span(6, [("traceloop.span.kind", "task"), ("traceloop.entity.name", "lookup"),
                  ("traceloop.workflow.name", "wf")], kind=3),
    ]
    other = _span(7, [("key", "value")], trace_id=b"\x07" * 16)
    resource = _kvs([("service.name", "svc-ü"), ("telemetry.sdk.language", "python"),
                     ("host.cores", 2)])
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource={"attributes": resource},
                      scope_spans=[ScopeSpans(scope={"name": "s"}, spans=spans[:4]),
                                   ScopeSpans(spans=spans[4:])]),
        ResourceSpans(scope_spans=[ScopeSpans(spans=[other])])])


def _prompt_version() -> str:
    from gepa_trace.prompts.templates import template_version

    return template_version(json.loads(TEMPLATE))


def stored_rows(url: str) -> dict:
    """Every span row, and the prompt versions without their times, as JSON-able lists."""
    store = open_store(url)
    with store.read() as conn:
        spans = [dict(r._mapping) for r in conn.execute(sa.text(
            "SELECT * FROM spans ORDER BY trace_id, span_id"))]
        versions = [dict(r._mapping) for r in conn.execute(sa.text(
            "SELECT component, version, agent, template, origin FROM prompt_versions "
            "ORDER BY component, version"))]
    forget_store(url)
    return {"spans": spans, "prompt_versions": versions}


def _post(port: int, body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _collect(url: str, transport: str, times: int = 1) -> dict:
    store = open_store(url, create=True)
    with Collector(store, CollectorConfig(http_port=0, grpc_port=0)) as collector:
        if transport == "http":
            for _ in range(times):  # a client's retry
                assert _post(collector.http_port, request().SerializeToString()) == 200
        else:
            with grpc.insecure_channel(f"127.0.0.1:{collector.grpc_port}") as channel:
                trace_service_pb2_grpc.TraceServiceStub(channel).Export(request(), timeout=30)
    return stored_rows(url)


def test_the_rows_stored_for_a_fixed_request_are_exactly_the_pinned_ones(tmp_path):
    expected = json.loads(FIXTURE.read_text())
    got = _collect(f"sqlite:///{tmp_path / 'http.db'}", "http")
    assert got == expected
    assert _collect(f"sqlite:///{tmp_path / 'grpc.db'}", "grpc") == expected


@pytest.mark.postgres
def test_postgresql_stores_the_same_pinned_rows(pg_url):  # written by COPY, not INSERT
    assert _collect(pg_url, "http") == json.loads(FIXTURE.read_text())


@pytest.mark.postgres
def test_a_retry_on_postgresql_changes_no_stored_row(pg_url):
    # the second request's COPY meets its spans stored: it goes again through staging
    assert _collect(pg_url, "http", times=2) == json.loads(FIXTURE.read_text())


def test_a_retry_on_sqlite_changes_no_stored_row(tmp_path):
    assert _collect(f"sqlite:///{tmp_path / 'retry.db'}", "http", times=2) \
        == json.loads(FIXTURE.read_text())


# -- PROMPT/LLM links across requests and transactions (store/prompt_links.py) ----------

def _oi_prompt(trace: int, n: int, end: int) -> Span:
    return _span(n, [("openinference.span.kind", "PROMPT"),
                     ("llm.prompt_template.template", f"You plan trips {trace}.{n}"),
                     ("output.value", json.dumps({"messages": [
                         {"type": "system", "content": f"You plan trips {trace}.{n}"}]})),
                     ("metadata", json.dumps({"langgraph_node": "planner"}))],
                 trace_id=bytes([trace]) * 16, parent_span_id=bytes([trace]) * 8,
                 name="ChatPromptTemplate", start_time_unix_nano=T0 + end - 5,
                 end_time_unix_nano=T0 + end)


def _oi_llm(trace: int, n: int, start: int, ours: bool = False) -> Span:
    attributes = [("openinference.span.kind", "LLM"),
                  ("metadata", json.dumps({"langgraph_node": "planner"}))]
    if ours:  # our own instrumentation's call, without a prompt version
        attributes += [("gepa.agent", "trip-agent"), ("gepa.component", "planner")]
    return _span(n, attributes, trace_id=bytes([trace]) * 16,
                 parent_span_id=bytes([trace]) * 8, name="ChatOpenAI",
                 start_time_unix_nano=T0 + start, end_time_unix_nano=T0 + start + 10)


def linked_transactions() -> list[list[list[Span]]]:
    """Transactions of requests of spans whose PROMPT/LLM links cross requests and
    transactions, in every order the join handles."""
    return [
        [[_oi_llm(20, 20, 30)]],  # an LLM span stored before its PROMPT ...
        [[_oi_prompt(20, 21, 20)]],  # ... which updates it
        [[_oi_prompt(21, 22, 20), _oi_prompt(21, 23, 25)]],  # PROMPTs stored first ...
        [[_oi_llm(21, 24, 30)]],  # ... the later one that ended before the call
        [[_oi_prompt(22, 25, 40)]],  # ended after the call started: still its nearest
        [[_oi_llm(22, 26, 30)]],
        [[_oi_llm(23, 27, 30)]],  # a PROMPT that ends after the stored call starts ...
        [[_oi_prompt(23, 28, 40)]],  # ... does not update it
        [[_oi_llm(24, 29, 30)], [_oi_prompt(24, 30, 20)]],  # two requests, one transaction
        [[_oi_prompt(25, 31, 20), _oi_llm(25, 32, 30, ours=True)]],  # our own call
        [[_oi_llm(26, 33, 30, ours=True)]],  # our own call stored first
        [[_oi_prompt(26, 34, 20)]],
        [[_oi_prompt(20, 21, 20)], [_oi_llm(27, 35, 30)]],  # a retry beside a new span
        [[_oi_prompt(27, 36, 20), _oi_prompt(27, 37, 22)]],
    ]


def _linked_rows(url: str) -> dict:
    from gepa_trace.collectors.otlp_decode import Decoded, prepared_batches
    from gepa_trace.store.spans import write_prepared

    store = open_store(url, create=True)
    for transaction in linked_transactions():
        batches = []
        for spans in transaction:
            request = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[
                ResourceSpans(resource={"attributes": _kvs([("service.name", "svc")])},
                              scope_spans=[ScopeSpans(spans=spans)])])
            batches += prepared_batches(request, Decoded())
        write_prepared(store, batches)
    return stored_rows(url)


def test_prompt_links_across_requests_and_transactions_store_the_pinned_rows(store_url):
    assert _linked_rows(store_url) == json.loads(LINKED.read_text())


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows = _collect(f"sqlite:///{tmp}/pin.db", "http")
        linked = _linked_rows(f"sqlite:///{tmp}/linked.db")
    FIXTURE.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    LINKED.write_text(json.dumps(linked, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {FIXTURE} ({len(rows['spans'])} spans) and {LINKED} "
          f"({len(linked['spans'])} spans)", file=sys.stderr)


@pytest.mark.postgres
def test_postgresql_writes_hand_their_connection_back_in_transaction_mode(pg_url):
    # The COPY path drives BEGIN/COMMIT itself in autocommit mode; a pooled connection
    # left in autocommit would make every later Store.write() commit statement by statement.
    import psycopg

    from gepa_trace.store.spans import write_spans

    store = open_store(pg_url)
    span = {"trace_id": "ab" * 16, "span_id": "cd" * 8, "name": "s", "start_ns": T0,
            "end_ns": T0 + 1, "attributes": {}, "resource": {}}
    write_spans(store, [span])
    write_spans(store, [span])  # stored already: the COPY fails, staging stores nothing
    with pytest.raises(psycopg.DataError):  # a kind longer than its column: refused whole
        write_spans(store, [dict(span, span_id="ef" * 8, kind="K" * 40)])
    held = [store.engine.connect() for _ in range(store.engine.pool.checkedin())]
    try:
        assert held and not any(c.connection.driver_connection.autocommit for c in held)
    finally:
        for conn in held:
            conn.close()
    with pytest.raises(RuntimeError), store.write() as conn:
        conn.execute(sa.text("DELETE FROM spans"))
        raise RuntimeError("rolled back")
    assert stored_rows(pg_url)["spans"][0]["span_id"] == "cd" * 8
