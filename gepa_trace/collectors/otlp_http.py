"""OTLP/HTTP: ``POST /v1/traces`` (and metrics, logs, feedback, health) on the stdlib server.

Answers, as the OTLP specification asks (each one tested):
- 200 + ExportTraceServiceResponse in the request's content type, with
  ``partial_success`` when some spans were rejected. Sent only after the spans are
  committed.
- 400 + google.rpc.Status: undecodable body (not retried by clients).
- 401: missing or wrong bearer token (when the collector has a token).
- 404: unknown path; 405: wrong method.
- 413: body over the limit (declared, chunked or after decompression).
- 415: content type other than application/x-protobuf or application/json, or an
  unknown Content-Encoding.
- 408: the body did not arrive within the request timeout (the connection is closed).
- 429 + Retry-After: the writer is behind (bounded queue), or the request does not fit
  in the memory left for requests in flight (``admission``; checked before each step of
  decoding, so a refused request is never decoded).
- 503 + Retry-After: shutting down, the database is unavailable, the commit did not
  finish within the request timeout (the spans may be stored; a retry stores no
  duplicate), or too many connections.

Connections are HTTP/1.1 keep-alive (the OTLP exporters reuse them); after an error
that leaves the body unread the connection is closed. Against slow or too many
clients (``CollectorConfig``): each connection thread reads through a deadline (idle
keep-alive, then the head, then the whole request), and past ``max_connections``
connections a selector thread (``otlp_overflow``) reads each new connection's head for at
most a second, answers ``GET /healthz`` as usual and anything else 503, and closes it,
so ``/healthz`` stays reachable under a connection flood.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from gepa_trace.collectors.admission import OverBudget, Ticket, TooLarge
from gepa_trace.collectors.otlp_decode import (
    INTERNAL,
    INVALID_ARGUMENT,
    JSON,
    NOT_FOUND,
    PROTOBUF,
    RESOURCE_EXHAUSTED,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UNIMPLEMENTED,
    RequestError,
    decode_request,
    decompress,
    encode_response,
    encode_status,
    media_type,
)
from gepa_trace.collectors.otlp_overflow import Overflow
from gepa_trace.collectors.otlp_writer import WriteFailed, WriterBusy, WriterClosed

if TYPE_CHECKING:
    from gepa_trace.collectors.otlp import Receiver

log = logging.getLogger(__name__)

_GRPC_CODE = {400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 404: NOT_FOUND, 405: UNIMPLEMENTED,
              408: UNAVAILABLE, 411: INVALID_ARGUMENT, 413: RESOURCE_EXHAUSTED,
              415: INVALID_ARGUMENT,
              429: UNAVAILABLE, 500: INTERNAL, 501: UNIMPLEMENTED, 503: UNAVAILABLE,
              504: UNAVAILABLE}
_SIGNALS = {"/v1/traces", "/v1/metrics", "/v1/logs"}
_DRAIN_LIMIT = 64 * 1024 * 1024  # refused bodies up to this size are read and dropped
_WRITE_TIMEOUT_S = 5.0  # sending one answer


class _Refused(Exception):
    def __init__(self, status: int, message: str, *, retry_after: int | None = None,
                 close: bool = False):
        super().__init__(message)
        self.status, self.message, self.retry_after, self.close = status, message, retry_after, close


class _DeadlineReader(io.RawIOBase):
    """The connection's socket, read under a deadline (``time.monotonic()``) that the
    handler moves: a byte a second cannot keep a request alive past it."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


def health_answer(receiver: Receiver) -> tuple[int, bytes]:
    """``GET /healthz``: 200 when ok, 503 when degraded or stopping; the state as JSON."""
    health = receiver.health()
    return (200 if health["status"] == "ok" else 503), json.dumps(health).encode()


class OTLPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length
    server_version = "gepa-trace-collect"
    server: OTLPHTTPServer

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader, 1 << 16)
        self._request_deadline = 0.0
        self._ticket: Ticket | None = None

    def handle_one_request(self) -> None:
        config = self.server.receiver.config
        self._reader.deadline = time.monotonic() + config.idle_timeout_s
        try:
            if not self.rfile.peek(1):  # the client closed the connection
                self.close_connection = True
                return
        except (TimeoutError, OSError):  # idle keep-alive connection: closed
            self.close_connection = True
            return
        started = time.monotonic()
        self._reader.deadline = started + config.header_timeout_s
        self._request_deadline = started + config.request_timeout_s
        super().handle_one_request()  # a head not received in time closes the connection

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self._reader.deadline = self._request_deadline  # the body, until the answer
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- routing -----------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            status, body = health_answer(self.server.receiver)
            self._reply(status, JSON, body)
        elif path in _SIGNALS or path == "/v1/feedback":
            self._error(405, "use POST", JSON)
        else:
            self._error(404, f"no such path {path!r}", JSON)

    def do_POST(self) -> None:
        self._body_read = False  # one handler serves every request of a connection
        path = self.path.split("?", 1)[0]
        kind = media_type(self.headers.get("Content-Type"))
        reply_kind = PROTOBUF if kind == PROTOBUF else JSON
        receiver = self.server.receiver
        with receiver.in_flight(), receiver.budget.ticket() as ticket:
            self._ticket = ticket  # given back before the answer is sent (see _reply)
            try:
                if path not in _SIGNALS and path != "/v1/feedback":
                    raise _Refused(404, f"no such path {path!r}", close=True)
                if not receiver.authorized(self.headers.get("Authorization")):
                    raise _Refused(401, "missing or wrong bearer token", close=True)
                if not receiver.accepting:
                    raise _Refused(503, "the collector is shutting down", retry_after=5,
                                   close=True)
                if path == "/v1/feedback":
                    return self._feedback(ticket)
                if kind not in (PROTOBUF, JSON):
                    raise _Refused(415, f"unsupported Content-Type "
                                        f"{self.headers.get('Content-Type')!r} (use "
                                        f"{PROTOBUF} or {JSON})", close=True)
                body = self._read_body(ticket)
                if path != "/v1/traces":  # metrics and logs: accepted and discarded
                    decompress(body, self.headers.get("Content-Encoding"),
                               receiver.max_body_bytes, ticket.take)
                    return self._reply(200, reply_kind, b"{}" if kind == JSON else b"")
                request, decoded = decode_request(body, kind,
                                                  self.headers.get("Content-Encoding"),
                                                  receiver.max_body_bytes, ticket)
                del body
                receiver.export(request, decoded, self._request_deadline)
                del request
                self._reply(200, reply_kind, encode_response(decoded, reply_kind))
            except RequestError as exc:
                self._error(exc.status, exc.message, reply_kind)
            except _Refused as exc:
                # Read and drop a body we refused unread (up to a bound), so that the
                # client, still sending, gets our answer instead of a reset connection.
                close = exc.close and not self._discard_body()
                self._error(exc.status, exc.message, reply_kind, retry_after=exc.retry_after,
                            close=close)
            except (WriterBusy, OverBudget) as exc:
                self._error(429, str(exc), reply_kind, retry_after=exc.retry_after)
            except TooLarge as exc:
                self._error(413, str(exc), reply_kind)
            except WriterClosed as exc:
                self._error(503, str(exc), reply_kind, retry_after=5, close=True)
            except TimeoutError:
                self._error(503, "spans not committed within the request timeout; they may "
                            "be stored, a retry stores no duplicate", reply_kind,
                            retry_after=2)
            except WriteFailed as exc:
                self._error(503 if exc.retryable else 500, str(exc), reply_kind,
                            retry_after=2 if exc.retryable else None)

    def do_PUT(self) -> None:
        self._body_read = False
        self._error(405, "use POST", JSON, close=not self._discard_body())

    do_DELETE = do_PATCH = do_PUT

    # -- bodies ------------------------------------------------------------------------
    def _discard_body(self) -> bool:
        """Read and drop the unread body; False when that is not possible or too big."""
        if self._body_read or self.headers.get("Transfer-Encoding"):
            return False
        try:
            remaining = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return False
        if remaining < 0 or remaining > _DRAIN_LIMIT:
            return False
        try:
            if self._skip(remaining) != remaining:
                return False
        except OSError:
            return False
        self._body_read = True
        return True

    def _skip(self, n: int) -> int:
        """Read and drop up to ``n`` bytes of the body; how many there were."""
        done = 0
        while done < n:
            piece = self.rfile.read(min(n - done, 1 << 16))
            if not piece:
                break
            done += len(piece)
        return done

    def _read_body(self, ticket: Ticket) -> bytes:
        """The body, its size taken from ``ticket`` before it is read."""
        self._body_read = True
        limit = self.server.receiver.max_body_bytes
        try:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                return self._read_chunked(limit, ticket)
            length_text = self.headers.get("Content-Length")
            if length_text is None:
                raise _Refused(411, "Content-Length required", close=True)
            try:
                length = int(length_text)
            except ValueError:
                raise _Refused(400, f"bad Content-Length {length_text!r}",
                               close=True) from None
            if length < 0:
                raise _Refused(400, f"bad Content-Length {length_text!r}", close=True)
            if length > limit:
                self._body_read = False  # _discard_body may still drain it
                raise _Refused(413, f"body of {length} bytes exceeds the limit of {limit} "
                               "bytes", close=True)
            try:
                ticket.take(length)
            except OverBudget as exc:
                self._body_read = False  # refused unread: drained, the connection kept
                raise _Refused(429, str(exc), retry_after=exc.retry_after,
                               close=True) from None
            body = self.rfile.read(length)
        except TimeoutError:
            raise _Refused(408, "body not received within the request timeout",
                           close=True) from None
        if len(body) != length:
            raise _Refused(400, "body shorter than its Content-Length", close=True)
        return body

    def _read_chunked(self, limit: int, ticket: Ticket) -> bytes:
        """The chunked body, each chunk taken from ``ticket`` before it is read. One
        over ``limit`` is still read to its end (dropped past the limit), up to
        ``_DRAIN_LIMIT``, so the client, still sending, reads the 413 instead of a
        broken pipe and may keep the connection."""
        parts, size = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                chunk = int(line.split(b";", 1)[0].strip() or b"x", 16)
            except ValueError:
                raise _Refused(400, "malformed chunked body", close=True) from None
            if chunk == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers, ignored
                if size > limit:
                    raise _Refused(413, f"body of {size} bytes exceeds the limit of "
                                   f"{limit} bytes")
                return b"".join(parts)
            size += chunk
            if size > _DRAIN_LIMIT:
                raise _Refused(413, f"body exceeds the limit of {limit} bytes", close=True)
            if size <= limit:
                try:
                    ticket.take(chunk)
                except OverBudget as exc:
                    raise _Refused(429, str(exc), retry_after=exc.retry_after,
                                   close=True) from None
                data = self.rfile.read(chunk)
                parts.append(data)
                got = len(data)
            else:  # refused already: read the rest and drop it
                parts.clear()
                got = self._skip(chunk)
            if got != chunk:
                raise _Refused(400, "truncated chunked body", close=True)
            self.rfile.readline(8)

    def _feedback(self, ticket: Ticket) -> None:
        receiver = self.server.receiver
        body = decompress(self._read_body(ticket), self.headers.get("Content-Encoding"),
                          receiver.max_body_bytes, ticket.take)
        try:
            fields = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"feedback body is not valid JSON: {exc}") from None
        status, payload = receiver.feedback(fields)
        self._reply(status, JSON, json.dumps(payload).encode())

    # -- replies -----------------------------------------------------------------------
    def _error(self, status: int, message: str, kind: str, *, retry_after: int | None = None,
               close: bool = False) -> None:
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="gepa-trace"'
        body = encode_status(_GRPC_CODE.get(status, INTERNAL), message, kind)
        self._reply(status, kind, body, headers=headers, close=close)

    def _reply(self, status: int, kind: str, body: bytes, *, headers: dict | None = None,
               close: bool = False) -> None:
        if self._ticket is not None:  # a client sending its next request at once finds
            self._ticket.release()  # the memory of this one free again
            self._ticket = None
        try:
            self.connection.settimeout(_WRITE_TIMEOUT_S)  # not the read deadline's rest
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client left or stopped reading; the spans are stored anyway
            self.close_connection = True


class OTLPHTTPServer(ThreadingHTTPServer):
    """A thread per connection, up to ``max_connections``; the connections past it get
    one answer from ``otlp_overflow.Overflow`` and are closed. Handler threads are daemons so idle
    keep-alive connections never hold up shutdown (in-flight requests are awaited by
    the Receiver)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], receiver: Receiver):
        self.receiver = receiver
        self.max_connections = receiver.config.max_connections
        self._open = 0
        self._open_lock = threading.Lock()
        # SO_REUSEPORT: the processes of `gepa-trace collect --workers` share the port
        self.allow_reuse_port = receiver.config.reuse_port
        # before binding: a port in use closes the server at once, overflow included
        self._overflow = Overflow(lambda: health_answer(receiver))
        super().__init__(address, OTLPHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def connection_count(self) -> int:
        return self._open

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            over = self._open >= self.max_connections
            if not over:
                self._open += 1
        if over:
            self._overflow.add(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._closed_one()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed_one()

    def _closed_one(self) -> None:
        with self._open_lock:
            self._open -= 1

    def server_close(self) -> None:
        super().server_close()
        self._overflow.close()
