"""Group commit: one writer thread stores the spans of many concurrent requests at once.

A request thread calls ``SpanWriter.write(spans)``; it returns only after those spans
are committed (so an OTLP 200 means stored). The writer thread takes every request
queued at that moment (up to ``max_batch_spans``), writes them in one transaction with
``write_spans`` and then releases every waiting request. Throughput therefore depends on
spans per transaction, not on requests per transaction.

The queue is bounded in spans: when ``max_pending_spans`` would be exceeded, ``write``
raises ``WriterBusy`` at once (the receiver answers 429 / UNAVAILABLE with Retry-After)
instead of letting memory and latency grow without limit. A request larger than the
bound is still accepted when the queue is empty, so no request is refused forever.

If a group's transaction fails, each request of the group is retried alone, so one
request whose spans the database refuses fails only itself.

On PostgreSQL the writer thread keeps its database connection from one transaction to
the next (a connection taken from the pool is pinged first: one more round trip per
transaction); one that the server ended is replaced, and its transaction tried once
more, before any request is told of a failure.

Recovery without restart: a SQLite file deleted or replaced under the collector is
noticed before each transaction (the path is gone or has another inode) and reopened
with ``open_store(create=True)``, which recreates the file and its schema, as the
in-process exporter does; a store that refused writes (read-only, locked, database
down) is simply tried again by the next transaction. Failures are logged without span
content or SQL, one line per episode plus a count at most once a minute (``_FailureLog``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gepa_trace.store.engine import (
    Store,
    failure_cause,
    file_identity,
    file_replaced,
    forget_store,
    open_store,
    sqlite_path,
)

log = logging.getLogger(__name__)

PrepareFn = Callable[[Sequence[Mapping[str, Any]]], Any]
CommitFn = Callable[[Store, Sequence[Any]], Any]


class WriterBusy(Exception):
    """The queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int = 1):
        super().__init__(f"the span writer is behind; retry after {retry_after}s")
        self.retry_after = retry_after


class WriterClosed(Exception):
    """The writer is shutting down and accepts nothing new."""


class WriteFailed(Exception):
    """The spans could not be stored; ``retryable`` says whether a retry may succeed."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


class StoreFileGone(Exception):
    """The SQLite file the collector opened was deleted or replaced under it, and could
    not be recreated."""


class _Job:
    __slots__ = ("done", "error", "prepared", "queued_at", "size")

    def __init__(self, prepared: Any, size: int):
        self.prepared = prepared
        self.size = size
        self.queued_at = time.monotonic()
        self.done = threading.Event()
        self.error: WriteFailed | None = None


def _is_retryable(exc: BaseException) -> bool:
    from sqlalchemy.exc import DisconnectionError, OperationalError, TimeoutError

    if isinstance(exc, (OperationalError, DisconnectionError, TimeoutError)):
        return True
    try:  # PostgreSQL's COPY path talks to psycopg directly (store/postgres_writes.py)
        from psycopg import OperationalError as DriverOperationalError
    except ImportError:
        return False
    return isinstance(exc, DriverOperationalError)


class SpanWriter:
    """The single writer of a collector (see module docstring). Thread-safe."""

    def __init__(self, store: Store, *, max_pending_spans: int = 100_000,
                 max_batch_spans: int = 20_000, prepare: PrepareFn | None = None,
                 commit: CommitFn | None = None,
                 on_open: Callable[[Store], None] | None = None):
        """``prepare(spans)`` runs in the calling thread (rows, derived columns);
        ``commit(store, [prepared, ...])`` runs in the writer thread, one transaction.
        Defaults: ``store.spans.prepare_spans`` / ``write_prepared``. ``on_open(store)``
        is called on a store reopened after its file was deleted or replaced."""
        if max_pending_spans < 1:
            raise ValueError("max_pending_spans must be at least 1")
        if max_batch_spans < 1:
            raise ValueError("max_batch_spans must be at least 1")
        from gepa_trace.store.spans import prepare_spans

        self.store = store
        self.max_pending_spans = max_pending_spans
        self.max_batch_spans = max_batch_spans
        self._prepare = prepare or prepare_spans
        self._commit_fn = commit or self._write_prepared
        self._connection: Any = None  # kept across transactions on PostgreSQL
        self._on_open = on_open
        self._queue: deque[_Job] = deque()
        self._pending = 0
        self._committing: list[_Job] = []
        self._cond = threading.Condition()
        self._closing = False
        self.stored_spans = 0  # handed to write_spans and committed
        self.transactions = 0
        self.requests = 0
        self.busy_s = 0.0  # time spent in transactions: near the elapsed time = saturated
        self.failures = _FailureLog()
        self._replaced = file_replaced
        self._path = sqlite_path(store.url)
        self._identity = file_identity(self._path) if self._path else None
        self._thread = threading.Thread(target=self._run, name="gepa-trace-span-writer",
                                        daemon=True)
        self._thread.start()

    @property
    def pending_spans(self) -> int:
        return self._pending

    @property
    def pending_requests(self) -> int:
        """Requests queued or in the transaction under way."""
        with self._cond:
            return len(self._queue) + len(self._committing)

    @property
    def lag_s(self) -> float:
        """Seconds the oldest request not yet committed has waited (0: none waits)."""
        with self._cond:
            waiting = [job.queued_at for job in self._committing[:1]]
            if self._queue:
                waiting.append(self._queue[0].queued_at)
        return time.monotonic() - min(waiting) if waiting else 0.0

    def write(self, spans: Sequence[Mapping[str, Any]], timeout: float | None = None) -> Any:
        """Store ``spans``; returns once committed, with what ``prepare`` made of them
        (by default a ``PreparedSpans``: its ``refused`` are the spans not stored).
        Raises WriterBusy, WriterClosed, WriteFailed, or TimeoutError (the spans may
        still be stored later; a client retry is harmless because duplicates are
        ignored)."""
        if not spans:
            return None
        self.check_room(len(spans))  # refuse early, before paying for prepare()
        # Per-span Python work happens here, in the request's thread, overlapping with
        # the writer thread's transaction (sqlite3 and psycopg release the GIL).
        return self.write_prepared(self._prepare(spans), len(spans), timeout)

    def check_room(self, spans: int) -> None:
        """Raise WriterClosed, or WriterBusy when ``spans`` more would overfill the
        queue (see the module docstring), before their rows are built."""
        with self._cond:
            if self._closing:
                raise WriterClosed("the collector is shutting down")
            if self._pending and self._pending + spans > self.max_pending_spans:
                raise WriterBusy(retry_after=1)

    def write_prepared(self, prepared: Any, size: int, timeout: float | None = None) -> Any:
        """``write`` of what ``prepare`` made already (``size`` spans); returns it."""
        job = _Job(prepared, size)
        with self._cond:
            if self._closing:
                raise WriterClosed("the collector is shutting down")
            if self._pending and self._pending + size > self.max_pending_spans:
                raise WriterBusy(retry_after=1)
            self._queue.append(job)
            self._pending += size
            self._cond.notify()
        if not job.done.wait(timeout):
            raise TimeoutError("spans not committed in time")
        if job.error is not None:
            raise job.error
        return job.prepared

    def close(self, timeout: float | None = None) -> None:
        """Refuse new writes, finish every queued one, stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            jobs = [self._queue.popleft()]
            size = jobs[0].size
            while self._queue and size + self._queue[0].size <= self.max_batch_spans:
                job = self._queue.popleft()
                jobs.append(job)
                size += job.size
            self._committing = jobs
            return jobs

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._drop_connection()

    def _serve(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                self._commit(jobs)
            finally:
                with self._cond:
                    self._pending -= sum(j.size for j in jobs)
                    self._committing = []
                for job in jobs:
                    job.done.set()

    def _write_prepared(self, store: Store, prepared: Sequence[Any]) -> Any:
        """``store.spans.write_prepared``; on PostgreSQL on a connection this thread keeps
        between transactions (taking one from the pool pings the server first: one more
        round trip per transaction). A connection the transaction found broken (the
        database restarted) is dropped and the transaction tried once more on a fresh
        one, checked by the pool's ping, as it would have been before the first try;
        storing twice is harmless (a span already stored is skipped)."""
        from gepa_trace.store.spans import write_prepared

        if store.dialect == "sqlite":
            return write_prepared(store, prepared)
        fresh = self._connection is None
        if fresh:
            self._connection = store.engine.connect()
        try:
            return write_prepared(store, prepared, self._connection)
        except Exception:
            broken = self._connection.invalidated
            self._drop_connection()
            if fresh or not broken:
                raise
        self._connection = store.engine.connect()
        return write_prepared(store, prepared, self._connection)

    def _drop_connection(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                connection.close()
            except Exception:  # a broken connection is dropped all the same
                log.debug("closing the writer's connection failed", exc_info=True)

    def _reopen(self) -> None:
        """Recreate the store at our path (file and schema), as the exporter does."""
        log.warning("the store file %s was deleted or replaced; recreating it", self._path)
        forget_store(self.store.url)
        store = open_store(self.store.url, create=True)
        if self._on_open is not None:
            self._on_open(store)
        self.store = store
        self._identity = file_identity(self._path)

    def _commit(self, jobs: list[_Job]) -> None:
        size = sum(j.size for j in jobs)
        started = time.perf_counter()
        if self._path is not None and self._replaced(self._path, self._identity):
            # the open connections would write to the deleted file: a 200 would store nothing
            try:
                self._reopen()
            except Exception as exc:  # noqa: BLE001 - reported to each waiting request
                gone = StoreFileGone(f"the store file {self._path} was deleted or replaced "
                                     f"and cannot be recreated: {failure_cause(exc)}")
                self.failures.failed(gone)
                for job in jobs:
                    job.error = WriteFailed(str(gone), retryable=True)
                return
        try:
            self._commit_fn(self.store, [j.prepared for j in jobs])
        except Exception as exc:  # noqa: BLE001 - reported to each waiting request
            if len(jobs) == 1:
                self.failures.failed(exc)
                jobs[0].error = WriteFailed(f"cannot store spans: {failure_cause(exc)}",
                                            _is_retryable(exc))
                return
            # Isolate the request the database refuses; the others still get stored.
            for job in jobs:
                self._commit([job])
            return
        self.busy_s += time.perf_counter() - started
        self.failures.succeeded()
        self.transactions += 1
        self.requests += len(jobs)
        self.stored_spans += size


class _FailureLog:
    """Logs failed writes without span content, at most one line per ``every_s``:
    a warning when failing starts, "still failing" with a count, info on recovery."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self.failing = False
        self.last_error: str | None = None
        self._unlogged = 0
        self._logged_at = 0.0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        cause = f"{type(exc).__name__}: {failure_cause(exc)}"
        now = time.monotonic()
        with self._lock:
            self.last_error = cause
            if not self.failing:
                self.failing, self._unlogged, self._logged_at = True, 0, now
                log.warning("storing spans failed: %s", cause)
                return
            self._unlogged += 1
            if now - self._logged_at < self.every_s:
                return
            count, self._unlogged, self._logged_at = self._unlogged, 0, now
        log.warning("storing spans still failing: %d more failed writes (%s)", count, cause)

    def succeeded(self) -> None:
        with self._lock:
            if not self.failing:
                return
            count, self.failing, self._unlogged = self._unlogged, False, 0
        log.info("storing spans works again (%d more failed writes before)", count)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (shutdown helpers)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True
