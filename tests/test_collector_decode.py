"""Decoding OTLP trace requests: protobuf, OTLP/JSON, compression, rejected spans, fuzzing."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from protobuf_wire import varint

from gepa_trace.collectors.admission import MemoryBudget, TooLarge
from gepa_trace.collectors.otlp_decode import (
    JSON,
    PIECE_SPANS,
    PROTOBUF,
    Decoded,
    RequestError,
    count_encoded_spans,
    count_spans,
    decode_protobuf,
    decode_request,
    encode_response,
    prepared_batches,
)
from gepa_trace.store.spans import ROW_COLUMNS

TRACE = bytes(range(1, 17))
SPAN = bytes(range(1, 9))
PARENT = bytes(range(11, 19))


def kv(key, **value):
    return KeyValue(key=key, value=AnyValue(**value))


def request_of(*spans, resource=None) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource={"attributes": resource or [kv("service.name", string_value="svc")]},
        scope_spans=[ScopeSpans(spans=list(spans))])])


def stored(request, pre=None) -> tuple[list[dict], Decoded]:
    """The rows a request's spans become, as {column: value} with the JSON columns
    read back, and what was rejected."""
    decoded = pre if pre is not None else Decoded()
    rows = []
    for batch in prepared_batches(request, decoded):
        for row in batch.rows:
            values = dict(zip(ROW_COLUMNS, row))
            for column in ("attributes", "events", "resource"):
                values[column] = json.loads(values[column])
            rows.append(values)
    return rows, decoded


def span(**fields) -> Span:
    base = {"trace_id": TRACE, "span_id": SPAN, "name": "s", "kind": 3,
            "start_time_unix_nano": 10, "end_time_unix_nano": 20}
    base.update(fields)
    return Span(**base)


def test_protobuf_request_becomes_rows_with_typed_attributes():
    s = span(parent_span_id=PARENT, status=Status(code=2, message="boom"), attributes=[
        kv("str", string_value="x"), kv("int", int_value=7), kv("f", double_value=0.5),
        kv("b", bool_value=True), kv("arr", array_value={"values": [AnyValue(int_value=1),
                                                                   AnyValue(string_value="a")]}),
        kv("map", kvlist_value={"values": [kv("k", string_value="v")]}),
        kv("bytes", bytes_value=b"\x00\x01")],
        events=[Span.Event(time_unix_nano=15, name="e", attributes=[kv("a", int_value=1)])])
    request, pre = decode_request(request_of(s).SerializeToString(), PROTOBUF)
    (got,), decoded = stored(request, pre)
    assert decoded.rejected == 0
    assert got["trace_id"] == TRACE.hex() and got["span_id"] == SPAN.hex()
    assert got["parent_span_id"] == PARENT.hex()
    assert (got["kind"], got["status_code"], got["status_message"]) == ("CLIENT", "ERROR", "boom")
    assert got["attributes"] == {"str": "x", "int": 7, "f": 0.5, "b": True, "arr": [1, "a"],
                                 "map": {"k": "v"}, "bytes": "AAE="}
    assert got["events"] == [{"name": "e", "time_ns": 15, "attributes": {"a": 1}}]
    assert got["resource"] == {"service.name": "svc"}


def test_otlp_json_uses_hex_ids_int_enums_string_int64_and_ignores_unknown_fields():
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
        "futureField": {"x": 1},
        "scopeSpans": [{"scope": {"name": "lib"}, "spans": [{
            "traceId": TRACE.hex(), "spanId": SPAN.hex(), "parentSpanId": "",
            "name": "root", "kind": 2, "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000000000000005", "unknownSpanField": True,
            "attributes": [{"key": "n", "value": {"intValue": "42"}}],
            "status": {"code": 1}}]}]}]}
    request, pre = decode_request(json.dumps(body).encode(), "application/json; charset=utf-8")
    (got,), _ = stored(request, pre)
    assert got["trace_id"] == TRACE.hex() and got["parent_span_id"] is None
    assert (got["kind"], got["status_code"]) == ("SERVER", "OK")
    assert got["start_ns"] == 1_700_000_000_000_000_000
    assert got["attributes"] == {"n": 42}


def test_gzip_and_deflate_bodies_decode_like_plain_ones():
    raw = request_of(span()).SerializeToString()
    for body, encoding in [(gzip.compress(raw), "gzip"), (zlib.compress(raw), "deflate"),
                           (zlib.compress(raw)[2:-4], "deflate")]:  # raw deflate too
        request, pre = decode_request(body, PROTOBUF, encoding)
        assert len(stored(request, pre)[0]) == 1


def test_spans_with_bad_ids_are_rejected_with_reasons_and_the_rest_kept():
    request = request_of(span(), span(trace_id=b""), span(span_id=b"\x01" * 4),
                         span(trace_id=b"\x01" * 15), span(parent_span_id=b"\x02" * 3),
                         span(span_id=b"\x00" * 8))
    rows, decoded = stored(request)
    assert len(rows) == 1 and decoded.rejected == 5
    assert "without a valid trace id" in decoded.error_message
    assert "span id of 4 bytes" in decoded.error_message
    response = ExportTraceServiceResponse.FromString(encode_response(decoded, PROTOBUF))
    assert response.partial_success.rejected_spans == 5
    as_json = json.loads(encode_response(decoded, JSON))
    assert as_json["partialSuccess"]["rejectedSpans"] in ("5", 5)


def test_json_ids_in_base64_from_nonconforming_clients_are_accepted():
    import base64

    body = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": base64.b64encode(TRACE).decode(), "spanId": base64.b64encode(SPAN).decode(),
        "name": "b64", "startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]}
    request, pre = decode_request(json.dumps(body).encode(), JSON)
    (got,), _ = stored(request, pre)
    assert (got["trace_id"], got["span_id"]) == (TRACE.hex(), SPAN.hex())


def test_json_span_whose_id_is_not_hex_is_rejected_not_the_request():
    good = {"traceId": TRACE.hex(), "spanId": SPAN.hex(), "name": "ok",
            "startTimeUnixNano": "1", "endTimeUnixNano": "2"}
    bad = dict(good, spanId="zz" * 8, name="bad")
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [good, bad]}]}]}).encode()
    request, pre = decode_request(body, JSON)
    rows, decoded = stored(request, pre)
    assert [s["name"] for s in rows] == ["ok"]
    assert decoded.rejected == 1 and "not hex" in decoded.error_message


@pytest.mark.parametrize("body,ctype,encoding,status", [
    (request_of(span()).SerializeToString()[:-3], PROTOBUF, None, 400),   # truncated
    (b"{not json", JSON, None, 400),
    (b"[1, 2]", JSON, None, 400),
    (b'{"resourceSpans": 5}', JSON, None, 400),
    (b"\x1f\x8b garbage", PROTOBUF, "gzip", 400),
    (b"x", "text/plain", None, 415),
    (b"x", PROTOBUF, "br", 415),
])
def test_undecodable_requests_raise_request_error_with_status(body, ctype, encoding, status):
    with pytest.raises(RequestError) as info:
        decode_request(body, ctype, encoding)
    assert info.value.status == status


def test_decompression_is_bounded_against_gzip_bombs():
    bomb = gzip.compress(b"\0" * 5_000_000)
    with pytest.raises(RequestError) as info:
        decode_request(bomb, PROTOBUF, "gzip", limit=1_000_000)
    assert info.value.status == 413


def test_protobuf_spans_are_counted_from_the_framing_across_resources_and_scopes():
    many = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(scope_spans=[ScopeSpans(spans=[span()] * 3), ScopeSpans()]),
        ResourceSpans(scope_spans=[ScopeSpans(spans=[span()] * 2),
                                   ScopeSpans(spans=[span()])])])
    assert count_encoded_spans(many.SerializeToString()) == count_spans(many) == 6
    assert count_encoded_spans(b"") == 0


def test_a_protobuf_request_over_the_memory_bound_is_refused_before_it_is_parsed():
    # 10,000 "spans" whose bytes are not spans: parsing them would fail (400), so a
    # TooLarge proves the refusal came from the count, before any parse.
    garbage_span = b"\x12\x04\xff\xff\xff\xff"  # field 2, 4 bytes that are no Span
    scope = garbage_span * 10_000
    resource = b"\x12" + varint(len(scope)) + scope  # ResourceSpans.scope_spans
    body = b"\x0a" + varint(len(resource)) + resource  # one resource_spans
    with pytest.raises(RequestError) as unparsable:
        decode_request(body, PROTOBUF)
    assert unparsable.value.status == 400
    budget = MemoryBudget(8 << 20)  # 10,000 spans are counted at ~16 MB
    with budget.ticket() as ticket, pytest.raises(TooLarge):
        decode_request(body, PROTOBUF, ticket=ticket)
    assert budget.used == 0


def test_each_span_is_stored_with_its_own_resource_among_many():
    request = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource={"attributes": [kv("service.name", string_value=f"svc{n}")]},
                      scope_spans=[ScopeSpans(spans=[span(name=f"s{n}")])])
        for n in range(6)])
    rows, _ = stored(request)
    assert [(r["name"], r["resource"], r["service_name"]) for r in rows] == [
        (f"s{n}", {"service.name": f"svc{n}"}, f"svc{n}") for n in range(6)]


def test_a_large_protobuf_request_is_parsed_in_pieces_into_the_same_rows():
    # Parsing holds the GIL; a request of many spans is parsed PIECE_SPANS at a time
    # (its resource and scope entries split, repeated), making the same rows in order.
    def numbered(n: int) -> Span:
        return span(span_id=(n + 1).to_bytes(8, "big"), name=f"s{n}",
                    attributes=[kv("n", int_value=n), kv("text", string_value="é" * (n % 5))])

    first = PIECE_SPANS * 2 + 7
    request = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource={"attributes": [kv("service.name", string_value="a")]},
                      schema_url="https://example.com/r",
                      scope_spans=[ScopeSpans(scope={"name": "one", "version": "1"},
                                              spans=[numbered(n) for n in range(first)]),
                                   ScopeSpans(), ScopeSpans(spans=[numbered(first)])]),
        ResourceSpans(resource={"attributes": [kv("service.name", string_value="b")]},
                      scope_spans=[ScopeSpans(spans=[numbered(first + 1)])])])
    body = request.SerializeToString()
    budget = MemoryBudget(1 << 40)
    with budget.ticket() as ticket:
        pieces = decode_protobuf(body, ticket)
    assert len(pieces.resource_spans) == 5  # 3 + 1 + 1 entries of at most PIECE_SPANS
    assert all(len(ss.spans) <= PIECE_SPANS
               for rs in pieces.resource_spans for ss in rs.scope_spans)
    assert pieces.resource_spans[2].scope_spans[0].scope.name == "one"
    assert pieces.resource_spans[2].schema_url == "https://example.com/r"
    rows, _ = stored(pieces)
    assert len(rows) == first + 2 and rows == stored(decode_protobuf(body))[0]
    assert [r["name"] for r in rows] == [f"s{n}" for n in range(first + 2)]
    with budget.ticket() as ticket, pytest.raises(RequestError) as broken:
        decode_protobuf(body[:-3], ticket)  # a truncated request: refused whole
    assert broken.value.status == 400


# -- fuzzing: whatever the bytes, the decoders answer RequestError or a request --------

def _decode_never_crashes(body: bytes, ctype: str, encoding: str | None) -> None:
    budget = MemoryBudget(1 << 40)  # counts what admission would take, refuses nothing
    try:
        with budget.ticket() as ticket:
            request, pre = decode_request(body, ctype, encoding, limit=1 << 20,
                                          ticket=ticket)
    except RequestError as exc:
        assert exc.status in (400, 413, 415)
        return
    if ctype == PROTOBUF and encoding is None:  # the count admission used is exact
        assert count_encoded_spans(body) == count_spans(request)
    rows, _ = stored(request, pre)  # never raises either
    for s in rows:
        assert len(s["trace_id"]) == 32 and len(s["span_id"]) == 16


_FUZZ = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
_VALID = request_of(span(parent_span_id=PARENT, attributes=[kv("a", string_value="b")])) \
    .SerializeToString()


@_FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes_as_protobuf_json_and_gzip(body):
    _decode_never_crashes(body, PROTOBUF, None)
    _decode_never_crashes(body, JSON, None)
    _decode_never_crashes(body, PROTOBUF, "gzip")


@_FUZZ
@given(st.integers(0, len(_VALID) - 1), st.integers(0, 255), st.integers(1, len(_VALID)))
def test_fuzz_mutated_and_truncated_valid_protobuf(position, byte, cut):
    mutated = bytearray(_VALID)
    mutated[position] = byte
    _decode_never_crashes(bytes(mutated)[:cut], PROTOBUF, None)


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                       st.text(max_size=20))
_json_value = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        ["resourceSpans", "scopeSpans", "spans", "traceId", "spanId", "parentSpanId",
         "attributes", "key", "value", "stringValue", "intValue", "kind", "name", "links",
         "instrumentationLibrarySpans", "status", "code", "events", "x"]), inner,
        max_size=5)), max_leaves=30)


@_FUZZ
@given(_json_value)
def test_fuzz_json_structures_shaped_like_otlp(value):
    _decode_never_crashes(json.dumps(value).encode(), JSON, None)


@pytest.mark.parametrize("node", ["planner", "é ü 😀", 'quote " inside', "back \\ slash",
                                  "tab\tand\nnewline", "\u00a0nbsp", "\ud800"])
def test_component_names_in_langchain_metadata_read_as_json_reads_them(node):
    from gepa_trace.conventions import _metadata

    text = json.dumps({"langgraph_step": 1, "langgraph_node": node})
    assert _metadata({"metadata": text}) == {"langgraph_node": json.loads(text)["langgraph_node"]}
    raw = '{"langgraph_node": "tab\tinside"}'  # a control character: not JSON, not read
    assert _metadata({"metadata": raw}) == {}
