"""How much request memory the collector admits at once, counted before it is spent.

Every OTLP request holds a ticket on one collector-wide ``MemoryBudget`` from its first
byte to its answer. The ticket grows in three steps, each taken *before* the memory it
stands for is allocated, so that a request refused for lack of room costs almost
nothing:

1. the body's declared size (``Content-Length``; for a chunked body, each chunk as it
   is read; for gRPC, the message grpc already received);
2. while the body is inflated, each piece of output times ``INFLATE_FACTOR`` (the
   inflated bytes, and the protobuf tree or JSON objects they are parsed into);
3. once the spans are counted (protobuf: from the message's framing, before it is
   parsed, in ``otlp_decode.decode_protobuf``; JSON: on the parsed message, before any
   span becomes a Python dict), ``SPAN_COST`` per span plus ``SPAN_BYTES_FACTOR`` per
   inflated byte: the span dicts and the rows prepared for the store.

Measured with ``/proc/self/status`` on this project's decoder: a tiny span (39 bytes of
protobuf) costs about 1.75 KB once decoded and prepared, a typical LangChain span (511
bytes) about 3.9 KB; the factors below over-estimate both.

When a step does not fit, ``OverBudget`` is raised (HTTP 429 + Retry-After, gRPC
UNAVAILABLE with ``retry-after`` metadata) and the ticket is released; a request whose
estimate alone exceeds the whole budget raises ``TooLarge`` (413: it can never fit; the
client should send smaller batches). The ticket is released when the request is
answered, including the wait for its commit, since its prepared rows live until then.
One large request therefore takes only its own share: the others keep being admitted
in the room that is left.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Self

#: per inflated byte, reserved while inflating: the bytes themselves and the protobuf
#: message (about 5x for tiny spans) or the JSON objects (about 4-5x) parsed from them
INFLATE_FACTOR = {"application/x-protobuf": 6, "application/json": 10}
#: per span and per inflated byte, reserved once the spans are counted: span dicts and
#: prepared rows (measured 1.75 KB per tiny span, 3.9 KB per 511-byte span)
SPAN_COST = 1600
SPAN_BYTES_FACTOR = 4


class OverBudget(Exception):
    """Not enough room now; retry after ``retry_after`` seconds."""

    def __init__(self, needed: int, retry_after: int = 1):
        super().__init__(f"the collector is at its memory bound for requests in flight "
                         f"(this request needs {needed >> 20} MB more); retry after "
                         f"{retry_after}s")
        self.retry_after = retry_after


class TooLarge(Exception):
    """This request alone would exceed the whole budget."""


class MemoryBudget:
    """A collector-wide bound in bytes on what requests in flight may hold. Thread-safe."""

    def __init__(self, limit_bytes: int):
        if limit_bytes < 1:
            raise ValueError("limit_bytes must be positive")
        self.limit = limit_bytes
        self._used = 0
        self.peak = 0  # the most ever admitted at once (reported by /healthz)
        self.refused = 0  # requests answered 429 or 413 for lack of room
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def ticket(self) -> Ticket:
        return Ticket(self)

    def _take(self, n: int, held: int) -> None:
        with self._lock:
            if held + n > self.limit:
                self.refused += 1
                raise TooLarge(f"request needs about {(held + n) >> 20} MB to decode, more "
                               f"than the collector's bound of {self.limit >> 20} MB "
                               "(--max-memory-mb); send smaller batches")
            if self._used + n > self.limit:
                self.refused += 1
                raise OverBudget(n)
            self._used += n
            self.peak = max(self.peak, self._used)

    def _give_back(self, n: int) -> None:
        with self._lock:
            self._used -= n


class Ticket:
    """What one request holds on a ``MemoryBudget``; a context manager releasing it all."""

    def __init__(self, budget: MemoryBudget):
        self.budget = budget
        self.held = 0

    def take(self, n: int) -> None:
        """Reserve ``n`` more bytes, or raise OverBudget / TooLarge holding nothing more."""
        if n <= 0:
            return
        self.budget._take(n, self.held)
        self.held += n

    def take_spans(self, spans: int, inflated_bytes: int) -> None:
        """Step 3: the decoded cost of ``spans`` spans parsed from ``inflated_bytes``."""
        self.take(spans * SPAN_COST + inflated_bytes * SPAN_BYTES_FACTOR)

    def release(self) -> None:
        if self.held:
            self.budget._give_back(self.held)
            self.held = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
