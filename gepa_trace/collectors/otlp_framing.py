"""An encoded ExportTraceServiceRequest read by its framing: its spans counted, and a
large one cut into pieces that are parsed one at a time.

Parsing a protobuf message is one call that holds the GIL for all of it. The receiver
counts a request's spans from its framing (a skeleton message type whose spans are
bytes) to admit or refuse it before parsing it (``collectors.admission``). A request
it admits with more than ``PIECE_SPANS`` spans is parsed a piece at a time, so that
no parse stalls the collector's other threads (``/healthz`` included) for long
(``otlp_decode.decode_protobuf``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields


def _skeleton_request() -> type:
    """A message type with the wire layout of ExportTraceServiceRequest down to its
    spans, each span kept as bytes: parsing it checks the framing and counts the spans
    without building any of them (resources and scopes are left as unknown fields)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="gepa_trace/otlp_skeleton.proto", package="gepa_trace.skeleton",
        syntax="proto3")
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    for name, number, item in (("Request", 1, "ResourceSpans"),
                               ("ResourceSpans", 2, "ScopeSpans"),
                               ("ScopeSpans", 2, None)):  # the field numbers of OTLP
        field_ = proto.message_type.add(name=name).field.add(
            name="items", number=number, label=repeated)
        if item is None:
            field_.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
        else:
            field_.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
            field_.type_name = f".gepa_trace.skeleton.{item}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("gepa_trace.skeleton.Request"))


Skeleton = _skeleton_request()


def parse_skeleton(raw: bytes | bytearray) -> Any:
    """The skeleton of an encoded request (raises protobuf's DecodeError, ValueError or
    RuntimeError for bytes that are not one)."""
    return Skeleton.FromString(raw)


def skeleton_spans(skeleton: Any) -> int:
    """How many spans the request of ``skeleton`` holds."""
    return sum(len(scope.items) for resource in skeleton.items for scope in resource.items)


#: Spans parsed in one protobuf call at most. Parsing holds the GIL: a message just
#: under the 4 MiB gRPC limit, 85k tiny spans, took 20-50 ms in one call, during which
#: every other thread of the collector (``/healthz`` included) stood still; a piece of
#: 4,096 spans is parsed in about a millisecond.
PIECE_SPANS = 4096


def pieces(skeleton: Any) -> Iterator[bytes]:
    """Encoded ExportTraceServiceRequests of one resource entry with one scope entry of
    at most ``PIECE_SPANS`` spans each, from the skeleton of a request (whose resources
    and scopes are kept as unknown fields, and re-encoded as they came)."""
    for resource in skeleton.items:
        resource_head = _head(resource)
        for scope in resource.items:
            scope_head = _head(scope)
            spans = scope.items
            for start in range(0, len(spans), PIECE_SPANS):
                piece = Skeleton()
                entry = piece.items.add()
                entry.MergeFrom(resource_head)
                part = entry.items.add()
                part.MergeFrom(scope_head)
                part.items.extend(spans[start:start + PIECE_SPANS])
                yield piece.SerializeToString()


def _head(entry: Any) -> Any:
    """A skeleton entry without its items: its unknown fields (the resource or scope
    and its schema URL) alone, re-encoded, so that its many spans are not copied."""
    encoded = bytearray()
    for field_ in unknown_fields.UnknownFieldSet(entry):
        data = field_.data
        if field_.wire_type == 2:  # length-delimited: every field OTLP has at this level
            encoded += _varint(field_.field_number << 3 | 2) + _varint(len(data)) + data
        else:  # not OTLP: the slower copy keeps whatever it is
            head = type(entry)()
            head.CopyFrom(entry)
            del head.items[:]
            return head
    return type(entry).FromString(bytes(encoded))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
