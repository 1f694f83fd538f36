"""Connections past the HTTP connection cap: answered in one selector thread, then closed.

A thread per connection is what ``http.server`` offers; capping the threads keeps a
flood of slow clients from exhausting threads and file descriptors, but the cap must
not make ``/healthz`` unreachable. So a connection over the cap is not refused blind:
``Overflow`` reads its request head without a thread of its own, answers
``GET /healthz`` as the collector does, anything else 503 + Retry-After, and closes it.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus

from gepa_trace.collectors.otlp_decode import JSON, UNAVAILABLE, encode_status


class Overflow:
    """Connections past the cap, all in one selector thread: each gets at most
    ``HEAD_TIMEOUT_S`` to send its request head (8 KB at most); ``GET /healthz`` is
    answered as usual, anything else 503 + Retry-After; then the connection is closed.
    At most ``MAX_WAITING`` wait at once (beyond that a new one is closed at once), so
    even a flood keeps file descriptors bounded."""

    HEAD_TIMEOUT_S = 1.0
    MAX_WAITING = 1024
    _HEAD_LIMIT = 8192

    def __init__(self, health: Callable[[], tuple[int, bytes]]):
        self._health = health
        self._selector = selectors.DefaultSelector()
        self._incoming: list[socket.socket] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a full wake-up buffer is a wake-up already sent
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._waiting: dict[socket.socket, tuple[float, bytearray]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="otlp-http-overflow",
                                        daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closed or len(self._incoming) + len(self._waiting) >= self.MAX_WAITING:
                _close(sock)
                return
            self._incoming.append(sock)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._lock:
                incoming, self._incoming = self._incoming, []
                closed = self._closed
            if closed:
                for sock in [*incoming, *self._waiting, self._wake_r, self._wake_w]:
                    _close(sock)
                self._selector.close()
                return
            now = time.monotonic()
            for sock in incoming:
                sock.setblocking(False)
                self._waiting[sock] = (now + self.HEAD_TIMEOUT_S, bytearray())
                self._selector.register(sock, selectors.EVENT_READ)
            for key, _ in self._selector.select(timeout=0.1):
                if key.fileobj is self._wake_r:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    continue
                self._read(key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            for sock in [s for s, (deadline, _) in self._waiting.items() if deadline < now]:
                self._done(sock)  # too slow: closed without an answer

    def _read(self, sock: socket.socket) -> None:
        head = self._waiting[sock][1]
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return self._done(sock)
        head += data
        if b"\r\n\r\n" in head or b"\n\n" in head or len(head) > self._HEAD_LIMIT:
            self._answer(sock, bytes(head))
            self._done(sock)

    def _answer(self, sock: socket.socket, head: bytes) -> None:
        words = head.split(b"\n", 1)[0].split()
        path = words[1].split(b"?", 1)[0] if len(words) >= 2 else b""
        extra = b""
        if words[:1] == [b"GET"] and path == b"/healthz":
            status, body = self._health()
        else:
            status = 503
            body = encode_status(UNAVAILABLE, "too many connections; retry later", JSON)
            extra = b"Retry-After: 1\r\n"
        reply = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                 f"Content-Type: {JSON}\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n").encode() + extra + b"\r\n" + body
        try:
            sock.send(reply)  # small: fits in the socket's buffer
        except OSError:
            pass

    def _done(self, sock: socket.socket) -> None:
        self._waiting.pop(sock, None)
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
