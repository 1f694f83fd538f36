"""Decoding OTLP trace requests into the rows the store writes.

Contract:
- ``decode_request(body, content_type, content_encoding, limit)`` returns an
  ``ExportTraceServiceRequest`` and a ``Decoded`` holding spans already rejected while
  decoding (OTLP/JSON ids that are not hex), or raises ``RequestError`` carrying the HTTP
  status to answer (400 undecodable, 413 over ``limit`` after decompression, 415
  unsupported type or encoding). It never raises anything else, whatever the bytes
  (fuzzed in the tests).
- ``prepared_batches(request, decoded)`` turns a decoded request straight into
  ``store.spans.PreparedSpans`` row batches (the collector, ``gepa-trace ingest``),
  rejecting (not failing on) spans whose ids are missing or of the wrong length and
  those whose times the store refuses. ``Decoded.rejected`` and ``Decoded.reasons``
  feed the OTLP ``partial_success`` answer.
- ``encode_response`` / ``encode_status`` write replies in the request's own format,
  because answering JSON to a protobuf client breaks strict clients.

OTLP/JSON differs from protobuf's canonical JSON mapping in one way that matters: trace
and span ids are hex, not base64. They are converted before ``json_format.Parse``;
integer enums, int64-as-string and unknown fields are what ``Parse`` already accepts.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from gepa_trace.collectors.admission import INFLATE_FACTOR, Ticket
from gepa_trace.collectors.otlp_framing import (
    PIECE_SPANS,
    parse_skeleton,
    pieces,
    skeleton_spans,
)
from gepa_trace.store.spans import PreparedSpans, refused_times, resource_columns

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# gRPC status codes used in google.rpc.Status bodies (the numbers are fixed by gRPC).
INVALID_ARGUMENT = 3
UNAUTHENTICATED = 16
RESOURCE_EXHAUSTED = 8
UNAVAILABLE = 14
INTERNAL = 13
UNIMPLEMENTED = 12
NOT_FOUND = 5

_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER",
          5: "CONSUMER"}
_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}
_MAX_REASONS = 5
INFLATE_STEP = 1 << 20  # bytes inflated between two checks of the limit and the budget


class RequestError(Exception):
    """A request that cannot be accepted as a whole; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Decoded:
    """What was rejected of one request's spans and why (``prepared_batches`` holds the
    spans that can be stored)."""

    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    #: about spans stored all the same (e.g. flagged inconsistent); OTLP sends them as
    #: a partial success with 0 rejected spans, which the spec calls a warning
    warnings: list[str] = field(default_factory=list)

    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected += count
        if reason not in self.reasons and len(self.reasons) < _MAX_REASONS:
            self.reasons.append(reason)

    @property
    def error_message(self) -> str:
        return "; ".join(self.reasons + self.warnings)


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decompress(body: bytes, encoding: str | None, limit: int,
               on_inflated: Callable[[int], None] | None = None) -> bytes | bytearray:
    """The body without its Content-Encoding, refusing more than ``limit`` bytes out.

    Inflated piece by piece (``INFLATE_STEP`` bytes at a time): ``on_inflated(n)`` is
    called before each piece is kept, so the caller can count it against a memory bound
    (and raise) before a small gzip bomb grows; for an identity body it is called once
    with the body's size.
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        if on_inflated is not None:
            on_inflated(len(body))
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        # "deflate" is zlib-wrapped per RFC 9110, but raw deflate is common in practice.
        wbits = zlib.MAX_WBITS if body[:1] and (body[0] & 0x0F) == 8 else -zlib.MAX_WBITS
    else:
        raise RequestError(415, f"unsupported Content-Encoding {encoding!r} "
                                "(use gzip, deflate or none)")
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    data: bytes = body
    try:
        while True:
            piece = inflater.decompress(data, INFLATE_STEP)
            data = inflater.unconsumed_tail
            _keep(out, piece, limit, on_inflated)
            if not data or inflater.eof:
                break
        if not inflater.eof:
            _keep(out, inflater.flush(), limit, on_inflated)
    except zlib.error as exc:
        raise RequestError(400, f"body is not valid {encoding}: {exc}") from None
    if not inflater.eof:
        raise RequestError(400, f"body is truncated {encoding} data")
    return out


def _keep(out: bytearray, piece: bytes, limit: int,
          on_inflated: Callable[[int], None] | None) -> None:
    if not piece:
        return
    if len(out) + len(piece) > limit:
        raise RequestError(413, f"decompressed body exceeds the limit of {limit} bytes")
    if on_inflated is not None:
        on_inflated(len(piece))
    out += piece


def decode_request(body: bytes, content_type: str | None, content_encoding: str | None = None,
                   limit: int = 1 << 62, ticket: Ticket | None = None
                   ) -> tuple[ExportTraceServiceRequest, Decoded]:
    """The ``ExportTraceServiceRequest`` in an HTTP body (see module contract).

    With a ``ticket`` (``admission``), the inflated bytes and then the counted spans are
    taken from the collector's memory budget before they are allocated; OverBudget or
    TooLarge propagate.
    """
    kind = media_type(content_type)
    if kind not in (PROTOBUF, JSON):
        raise RequestError(415, f"unsupported Content-Type {content_type!r} "
                                f"(use {PROTOBUF} or {JSON})")
    factor = INFLATE_FACTOR[kind]
    raw = decompress(body, content_encoding, limit,
                     None if ticket is None else lambda n: ticket.take(n * factor))
    if kind == JSON:
        request, decoded = decode_json(raw)
        if ticket is not None:
            ticket.take_spans(count_spans(request), len(raw))
        return request, decoded
    return decode_protobuf(raw, ticket), Decoded()


def count_spans(request: ExportTraceServiceRequest) -> int:
    """How many spans a parsed request holds, without converting any of them."""
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


#: What protobuf raises for bytes that are not the message it parses.
_MALFORMED = (DecodeError, ValueError, RuntimeError)


def _malformed(exc: Exception) -> RequestError:
    return RequestError(400, f"body is not a valid ExportTraceServiceRequest: "
                             f"{exc or 'truncated or malformed protobuf'}")


def _parse_skeleton(raw: bytes | bytearray) -> Any:
    try:
        return parse_skeleton(raw)
    except _MALFORMED as exc:
        raise _malformed(exc) from None


def count_encoded_spans(raw: bytes | bytearray) -> int:
    """How many spans an encoded ExportTraceServiceRequest holds, read from its framing.

    About 10x cheaper than parsing it (3 ms for 15 MB of 312k tiny spans, where the full
    parse takes 35 ms, in one call that holds the GIL): a request too large for the
    memory bound is refused on this count, before it is parsed, so a flood of them does
    not stall the collector's other threads (``/healthz`` included). The count
    ``decode_protobuf`` admits a request on; the tests check it against the parse.
    """
    return skeleton_spans(_parse_skeleton(raw))


def decode_protobuf(raw: bytes | bytearray, ticket: Ticket | None = None
                    ) -> ExportTraceServiceRequest:
    """The parsed request; with a ``ticket``, its spans (counted from the framing) are
    taken from the memory budget first, and OverBudget / TooLarge raised before parsing.

    A request of more than ``PIECE_SPANS`` spans is parsed a piece at a time: its
    resource and scope entries are split into entries of at most that many spans each
    (the same resource and scope repeated), which holds the same spans in the same
    order and makes the same rows (``prepared_batches``).
    """
    skeleton, spans = None, 0
    if ticket is not None:
        skeleton = _parse_skeleton(raw)
        spans = skeleton_spans(skeleton)
        ticket.take_spans(spans, len(raw))
    request = ExportTraceServiceRequest()
    try:
        if spans <= PIECE_SPANS:
            request.ParseFromString(raw)
        else:
            for piece in pieces(skeleton):
                request.MergeFromString(piece)  # appends its resource_spans entry
    except _MALFORMED as exc:
        raise _malformed(exc) from None
    return request


def decode_json(raw: bytes | bytearray) -> tuple[ExportTraceServiceRequest, Decoded]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "body is not an OTLP/JSON object")
    dropped = Decoded()
    try:
        _hex_ids_to_base64(data, dropped)
        request = json_format.ParseDict(data, ExportTraceServiceRequest(),
                                        ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, KeyError,
            RecursionError) as exc:
        raise RequestError(400, f"body is not a valid OTLP/JSON trace request: "
                                f"{str(exc)[:300]}") from None
    return request, dropped


def _hex_ids_to_base64(data: dict, dropped: Decoded) -> None:
    """Rewrite OTLP/JSON hex ids as the base64 that protobuf's JSON parser expects.

    A span whose id is not hex at all, or whose time no uint64 holds (negative, 2^64 or
    more), is removed and counted as rejected, so that one bad span does not make the
    whole request undecodable.
    """
    for rs in _list(data.get("resourceSpans")):
        if not isinstance(rs, dict):
            continue
        # Old exporters (OTLP < 0.15) said instrumentationLibrarySpans.
        if "scopeSpans" not in rs and "instrumentationLibrarySpans" in rs:
            rs["scopeSpans"] = rs.pop("instrumentationLibrarySpans")
        for ss in _list(rs.get("scopeSpans")):
            if not isinstance(ss, dict):
                continue
            spans = _list(ss.get("spans"))
            kept = []
            for span in spans:
                if not isinstance(span, dict):
                    kept.append(span)  # let Parse report the type error
                    continue
                try:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        _convert_id(span, key)
                    for key in ("startTimeUnixNano", "endTimeUnixNano"):
                        _check_time(span, key)
                    for event in _list(span.get("events")):
                        if isinstance(event, dict):
                            _check_time(event, "timeUnixNano")
                    for link in _list(span.get("links")):
                        if isinstance(link, dict):
                            _convert_id(link, "traceId")
                            _convert_id(link, "spanId")
                except ValueError as exc:
                    dropped.reject(str(exc))
                    continue
                kept.append(span)
            if isinstance(ss.get("spans"), list):
                ss["spans"] = kept


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _check_time(obj: dict, key: str) -> None:
    """A time that protobuf's fixed64 cannot hold (negative, 2^64 or more) rejects its
    span alone; one from 2^63 up is parsed and then refused by the store, also alone."""
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return  # absent, or a type Parse will reject with its own message
    try:
        number = int(value)
    except (TypeError, ValueError):
        return
    if number < 0:
        raise ValueError(f"{key} is negative")
    if number >= 1 << 64:
        raise ValueError(f"{key} beyond uint64")


def _convert_id(obj: dict, key: str) -> None:
    value = obj.get(key)
    if value is None or not isinstance(value, str):
        return  # absent, or a type Parse will reject with its own message
    if value == "":
        return
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        # Some non-conforming clients send protobuf's canonical base64; accept it only
        # when it decodes to an id's exact size, so nothing ambiguous slips through.
        try:
            raw = base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            raw = b""
        if len(raw) not in (8, 16):
            raise ValueError(f"{key} {value[:40]!r} is not hex") from None
    obj[key] = base64.b64encode(raw).decode("ascii")


def _any_value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    return getattr(v, which)


def attributes_of(key_values: Any) -> dict[str, Any]:
    """OTLP KeyValue list -> plain dict (later duplicates win, as in the SDK)."""
    out: dict[str, Any] = {}
    for kv in key_values:
        value = kv.value
        # Most values are non-empty strings: one read tells, where WhichOneof and then
        # the read were two (this loop is the largest share of decoding a span).
        text = value.string_value
        out[kv.key] = text if text else _any_value(value)
    return out


_NO_TRACE, _NO_SPAN = b"\0" * 16, b"\0" * 8


def _valid_spans(request: ExportTraceServiceRequest, decoded: Decoded
                 ) -> Iterator[tuple[dict[str, Any], Any, str, str, str | None]]:
    """(resource attributes, span message, trace id, span id, parent id: hex) of each
    span whose ids are valid; the others are rejected in ``decoded``. The spans of one
    resource share its one dict."""
    for rs in request.resource_spans:
        resource = attributes_of(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
                if len(trace_id) != 16 or trace_id == _NO_TRACE:
                    decoded.reject("span without a valid trace id (16 bytes)" if not trace_id
                                   else f"trace id of {len(trace_id)} bytes, expected 16")
                    continue
                if len(span_id) != 8 or span_id == _NO_SPAN:
                    decoded.reject("span without a valid span id (8 bytes)" if not span_id
                                   else f"span id of {len(span_id)} bytes, expected 8")
                    continue
                if parent and len(parent) != 8:
                    decoded.reject(f"parent span id of {len(parent)} bytes, expected 8")
                    continue
                yield resource, span, trace_id.hex(), span_id.hex(), \
                    (parent.hex() if parent else None)


def _events(span: Any) -> list[dict[str, Any]]:
    return [{"name": e.name, "time_ns": e.time_unix_nano,
             "attributes": attributes_of(e.attributes)} for e in span.events]


def prepared_batches(request: ExportTraceServiceRequest, decoded: Decoded,
                     batch_spans: int = 1 << 62) -> list[PreparedSpans]:
    """The spans of a request straight to the store's row tuples, ``batch_spans`` rows a
    batch at most: the rows ``store.spans.prepare_spans`` makes of the span dicts the
    in-process exporter writes, with no span dict in between (the collector's and
    ``gepa-trace ingest``'s path; pinned by tests/test_otlp_stored_rows.py).

    Spans with invalid ids or times (``store.spans.refused_times``) are rejected in
    ``decoded``, before their attributes are read.
    """
    batches = [PreparedSpans()]
    batch = batches[0]
    now_ns = int(batch.now * 1e9)
    kinds, statuses = _KINDS, _STATUS
    # The spans of one resource entry come together and share its dict: its columns
    # are computed once. (Not a cache by id(): a freed dict's id is reused by a later
    # resource's, which then got the earlier one's columns.)
    last: dict[str, Any] | None = None
    for resource, span, trace_id, span_id, parent in _valid_spans(request, decoded):
        start = span.start_time_unix_nano
        end = span.end_time_unix_nano or start
        reason = refused_times(start, end, now_ns)
        if reason is not None:
            decoded.reject(reason)
            continue
        if len(batch.rows) >= batch_spans:
            batch = PreparedSpans(now=batch.now)
            batches.append(batch)
        if resource is not last:
            last, resource_json = resource, resource_columns(resource)
        status = span.status
        batch.add(trace_id, span_id, parent, span.name, kinds.get(span.kind, "UNSPECIFIED"),
                  start, end, statuses.get(status.code, "UNSET"), status.message or None,
                  attributes_of(span.attributes), _events(span) if span.events else None,
                  resource, *resource_json)
    return batches


def encode_response(decoded: Decoded | None, kind: str) -> bytes:
    """An ExportTraceServiceResponse, with partial_success when spans were rejected or
    stored with a warning."""
    response = ExportTraceServiceResponse()
    if decoded is not None and (decoded.rejected or decoded.warnings):
        response.partial_success.rejected_spans = decoded.rejected
        response.partial_success.error_message = decoded.error_message
    if kind == JSON:
        return json_format.MessageToJson(response, indent=None).encode()
    return response.SerializeToString()


def encode_status(code: int, message: str, kind: str) -> bytes:
    """A google.rpc.Status body, the OTLP/HTTP error payload."""
    status = status_pb2.Status(code=code, message=message)
    if kind == JSON:
        return json_format.MessageToJson(status, indent=None).encode()
    return status.SerializeToString()
