"""One optimization per agent at a time: the run lock and its heartbeat.

The lock is one row of ``run_locks`` per agent, naming the run, process and host that
hold it and when they last renewed it (``heartbeat_at``). Another run may take it over
only when its heartbeat is older than ``stale_seconds`` or its process is gone, so the
holder must keep renewing it however long its steps take: a validation at real LLM
latency can run for many minutes without a checkpoint. ``RunLock`` therefore renews the
heartbeat on its own daemon thread, from ``acquire`` until ``release``.

A lock can still be lost: a run that looked stale (its process was suspended, or the
database was unreachable) is taken over by another, or someone deletes the row. The
renewal then finds no row of ours, and ``RunLock.lost`` says why; the engine reads it at
its safe points and stops there (``Optimizer._check_stop``), keeping everything it
recorded, so that two runs never go on writing one agent's fronts side by side. The
same happens when the heartbeat cannot be written for half of ``stale_seconds``: past
that point another run may soon take the lock over, and this run cannot tell.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from typing import Self

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from gepa_trace.errors import LockHeld
from gepa_trace.optimizer.persistence import write_retrying
from gepa_trace.store.engine import Store
from gepa_trace.store.tables import RunLockRow

log = logging.getLogger(__name__)

_LOCKS = RunLockRow.__table__

#: The heartbeat is renewed every ``stale_seconds / RENEWALS_PER_STALE`` seconds, at most
#: ``RENEW_MAX_S`` apart (a renewal is one small UPDATE: cheap, and a short period lets a
#: run learn soon that it lost its lock) and at least ``RENEW_MIN_S`` apart (so a tiny
#: ``stale_seconds`` in a test does not make the thread spin on the database).
RENEWALS_PER_STALE = 10
RENEW_MAX_S = 30.0
RENEW_MIN_S = 0.05
#: How long ``release`` waits for a renewal in progress to end.
JOIN_TIMEOUT_S = 60.0

# The locks held by live RunLocks of this process, by (store URL, agent). A lock row of
# this process is otherwise taken back by a new run (it is left over from a run whose
# release failed); one that a live RunLock still renews is refused instead, so that two
# runs of one process do not optimize one agent either.
_live: dict[tuple[str, str], RunLock] = {}
_live_guard = threading.Lock()


def renew_every(stale_seconds: float) -> float:
    """Seconds between two renewals of a lock that goes stale after ``stale_seconds``."""
    return max(RENEW_MIN_S, min(stale_seconds / RENEWALS_PER_STALE, RENEW_MAX_S))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The lock row of one agent: held by one run at a time.

    A lock is free when there is no row, when its heartbeat is older than
    ``stale_seconds``, or when its process is gone (same host, pid not alive). Taking a
    held lock raises ``LockHeld`` naming the run, process and heartbeat age.

    Contract: ``acquire`` takes the row and starts a daemon thread that renews the
    heartbeat every ``renew_every(stale_seconds)`` seconds; ``release`` (also run at
    interpreter exit, and safe to call twice) stops and joins that thread and deletes
    the row if it is still ours. The thread never raises: a renewal that fails (the
    database busy or down) is logged and tried again at the next tick. ``lost`` is None
    while the lock is ours, and once set (the row was taken over or deleted, or could
    not be renewed for ``stale_seconds / 2``) it names the cause, stays set, and the
    thread stops renewing. Usable as a context manager (acquire ... release).
    """

    def __init__(self, store: Store, agent: str, run_id: str, stale_seconds: float):
        if not stale_seconds > 0:
            raise ValueError(f"stale_seconds must be > 0, got {stale_seconds!r}")
        self.store = store
        self.agent = agent
        self.run_id = run_id
        self.stale_seconds = stale_seconds
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.lost: str | None = None
        self.acquired_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renewed = 0.0  # time.monotonic() of the last renewal that was written

    # ------------------------------------------------------------------ taking it
    def acquire(self) -> None:
        """Take the lock (LockHeld if another live run holds it) and start renewing it."""
        now = time.time()
        key = (self.store.url, self.agent)
        with _live_guard:
            self._take(now, _live.get(key))
            _live[key] = self
        self.acquired_at = now
        self.lost = None
        self._renewed = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_until_stopped, daemon=True,
                                        name=f"gepa-run-lock[{self.agent}]")
        self._thread.start()
        # a daemon thread is killed mid-write at interpreter exit: stop it and give the
        # lock back first (a run that ends normally unregisters this in release)
        atexit.register(self.release)

    def _take(self, now: float, live_here: RunLock | None) -> None:
        try:
            with self.store.write() as conn:
                query = select(_LOCKS).where(_LOCKS.c.agent == self.agent)
                if self.store.dialect == "postgresql":
                    query = query.with_for_update()
                held = conn.execute(query).first()
                if held is not None:
                    age = now - held.heartbeat_at
                    here = held.pid == self.pid and held.host == self.host
                    gone = held.host == self.host and not _pid_alive(held.pid)
                    if (here and live_here is not None) or (
                            not here and not gone and age < self.stale_seconds):
                        raise LockHeld(
                            f"agent {self.agent!r} is already being optimized by run "
                            f"{held.run_id} (pid {held.pid} on {held.host}, last heartbeat "
                            f"{age:.0f}s ago); wait for it to finish, stop it, or retry once "
                            f"its heartbeat is older than {self.stale_seconds:.0f}s")
                    conn.execute(delete(_LOCKS).where(_LOCKS.c.agent == self.agent))
                conn.execute(_LOCKS.insert().values(
                    agent=self.agent, run_id=self.run_id, pid=self.pid, host=self.host,
                    acquired_at=now, heartbeat_at=now))
        except IntegrityError as exc:  # another process inserted first
            raise LockHeld(f"agent {self.agent!r} was just locked by another "
                           "optimization run") from exc

    # ------------------------------------------------------------------ keeping it
    def _ours(self):
        # pid, host and acquired_at too: a run resumed in another process keeps the
        # run id, and must not be mistaken for this one (acquired_at is stored as the
        # same 8-byte float we wrote, so equality holds on SQLite and PostgreSQL)
        return ((_LOCKS.c.agent == self.agent) & (_LOCKS.c.run_id == self.run_id)
                & (_LOCKS.c.pid == self.pid) & (_LOCKS.c.host == self.host)
                & (_LOCKS.c.acquired_at == self.acquired_at))

    def renew(self) -> bool:
        """Write one heartbeat; False (and ``lost`` set) when the row is no longer ours.
        Raises what the database raises; the heartbeat thread handles that."""
        if self.lost is not None:
            return False
        now = time.time()
        with self.store.write() as conn:
            matched = conn.execute(update(_LOCKS).where(self._ours())
                                   .values(heartbeat_at=now)).rowcount
            holder = None if matched else conn.execute(
                select(_LOCKS).where(_LOCKS.c.agent == self.agent)).first()
        if matched:
            self._renewed = time.monotonic()
            return True
        if holder is None:
            taken = "was deleted from the store"
        else:
            taken = f"was taken by run {holder.run_id} (pid {holder.pid} on {holder.host})"
        self._lose(f"the run lock of agent {self.agent!r} {taken}; stopping so that two "
                   "runs do not write one agent's fronts")
        return False

    def _lose(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            log.warning("optimization run %s: %s", self.run_id, reason)

    def _renew_until_stopped(self) -> None:
        every = renew_every(self.stale_seconds)
        failing_since: float | None = None
        while not self._stop.wait(every):
            try:
                if not self.renew():
                    return  # lost: a lock is never taken back behind the engine's back
                if failing_since is not None:
                    log.warning("run lock of agent %r renewed again after %.0fs of failures",
                                self.agent, time.monotonic() - failing_since)
                    failing_since = None
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any failure
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("cannot renew the run lock of agent %r (will retry every "
                                "%.1fs): %s", self.agent, every, _first_line(exc))
                unrenewed = time.monotonic() - self._renewed
                if unrenewed >= self.stale_seconds / 2:
                    # another run may take it over once it looks stale, and we could not
                    # tell: stop now, while that is still at least half a period away
                    self._lose(
                        f"the run lock of agent {self.agent!r} could not be renewed for "
                        f"{unrenewed:.1f}s ({_first_line(exc)}); another run may take it "
                        f"over after {self.stale_seconds:.0f}s, so this one stops so that "
                        "two runs do not write one agent's fronts")
                    return

    # ------------------------------------------------------------------ giving it back
    def release(self) -> None:
        """Stop renewing (joining the thread) and delete the row if it is still ours.
        Never raises: a row left behind is taken over once its process is gone or its
        heartbeat is stale, so a failed delete is logged, not fatal to the run."""
        if os.getpid() != self.pid:
            return  # a forked child (atexit is inherited) must not free its parent's lock
        atexit.unregister(self.release)
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            # bounded: a renewal stuck on an unreachable database must not hang the
            # end of the run (the thread is a daemon, and stops after that write)
            thread.join(timeout=JOIN_TIMEOUT_S)
        with _live_guard:
            if _live.get((self.store.url, self.agent)) is self:
                del _live[(self.store.url, self.agent)]
        if self.acquired_at is None:
            return
        try:
            write_retrying(self.store, "release the run lock",
                           lambda conn: conn.execute(delete(_LOCKS).where(self._ours())))
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("could not release the run lock of agent %r: %s", self.agent,
                        _first_line(exc))
        self.acquired_at = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
