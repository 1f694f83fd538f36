"""`gepa-trace collect --workers N`: N collector processes sharing the OTLP ports.

One collector process builds rows on one core at a time (its GIL) and writes through
one PostgreSQL connection, waiting on each transaction; PostgreSQL can take several
writers at once. So on PostgreSQL the collector runs as several processes
(``default_workers``): this one binds the ports first (port 0 picks free ones) with
SO_REUSEPORT, then starts the others on the very ports, and the kernel spreads the
clients' connections among them (bench/RESULTS.md, "Collector on PostgreSQL").

Each worker is a whole collector: its own writer thread and database connection, its
own connection cap and ``/healthz``, which answers for the worker that took the
connection (its ``pid`` says which). The memory bound of requests in flight is divided
among the workers, so ``--max-memory-mb`` still bounds them all together; what each
process adds of its own (the interpreter, about 100 MB, and the gRPC messages grpc holds
before admission, at most 64 MB) is paid per worker: with the defaults that accounting
gives about 840 MB for two workers and 1.2 GB for four (tests/test_collector_hostile.py
measures it for one process). Only
processes that also set SO_REUSEPORT, as the same user, can share the ports: a plain
second collector on them still fails with "address in use".

SQLite takes one writer at a time, so there ``--workers`` above 1 is refused.

Stopping: SIGTERM or Ctrl-C to the first process stops every worker, each finishing
the requests it accepted. A worker that exits on its own stops the others, and the
command exits 1 naming it: a supervisor (systemd, Kubernetes) restarts the whole. If
the first process is killed outright, the workers get SIGTERM from the kernel
(``stop_with_first``) and stop too.

The store URL (which may hold a password) and the token reach the other workers through
their environment, never their command line, which every user of the machine can read.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: Seconds a worker has to start listening, and to finish after SIGTERM.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


def default_workers(dialect: str) -> int:
    """Processes for a store: one per CPU on PostgreSQL, at least 2 (one process leaves
    a core partly idle while it waits on its transactions) and at most 4 (each adds
    about 170 MB: see the module docstring); one on SQLite, and where the kernel does
    not spread connections among sockets sharing a port (``sharing_unsupported``)."""
    if dialect == "sqlite" or sharing_unsupported():
        return 1
    return min(4, max(2, os.cpu_count() or 1))


def sharing_unsupported() -> str | None:
    """Why this system cannot run workers on shared ports, or None (Linux): macOS
    and the BSDs accept SO_REUSEPORT but do not spread connections, and Windows has
    none."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        return f"workers share their ports with SO_REUSEPORT, spread only on Linux " \
               f"(this is {sys.platform})"
    return None


class WorkerFailed(Exception):
    """A worker did not start, or exited on its own."""


@dataclass
class Workers:
    """The processes started besides this one (``start``), and their lines on stderr
    relayed with a ``worker K:`` prefix (but their "listening" line: the first
    process says it once every worker listens)."""

    procs: list[subprocess.Popen] = field(default_factory=list)
    #: Each worker's counts from its last line: spans, transactions, requests, rejected.
    totals: dict[int, tuple[int, ...]] = field(default_factory=dict)
    _relays: list[threading.Thread] = field(default_factory=list)

    def start(self, count: int, args: Sequence[str], env: dict[str, str],
              echo: Callable[[str], None]) -> None:
        """Start ``count`` workers running ``gepa-trace collect`` with ``args``; return
        once each listens. Raises WorkerFailed (the ones started are stopped)."""
        command = [sys.executable, "-c", "from gepa_trace.cli import main; main()",
                   "collect", *args]
        try:
            for number in range(2, count + 2):
                proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, bufsize=1)
                self.procs.append(proc)
                listening = threading.Event()
                relay = threading.Thread(target=self._relay,
                                         args=(proc, number, echo, listening),
                                         name=f"collect-worker-{number}", daemon=True)
                relay.start()
                self._relays.append(relay)
                deadline = time.monotonic() + START_TIMEOUT_S
                while not listening.wait(0.05):
                    if proc.poll() is not None:
                        raise WorkerFailed(f"worker {number} exited with code "
                                           f"{proc.returncode} before listening")
                    if time.monotonic() > deadline:
                        raise WorkerFailed(f"worker {number} did not listen within "
                                           f"{START_TIMEOUT_S:.0f} s")
        except BaseException:
            self.stop()
            raise

    def exited(self) -> str | None:
        """Which worker exited on its own, and how, or None."""
        for number, proc in enumerate(self.procs, 2):
            if proc.poll() is not None:
                return f"worker {number} (pid {proc.pid}) exited with code {proc.returncode}"
        return None

    def stop(self) -> None:
        """``terminate`` and ``wait``."""
        self.terminate()
        self.wait()

    def terminate(self) -> None:
        """SIGTERM to every worker: each stops accepting and finishes what it accepted."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        """Wait for every worker to end; kill one still running after ``STOP_TIMEOUT_S``."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for relay in self._relays:
            relay.join(5)

    def _relay(self, proc: subprocess.Popen, number: int, echo: Callable[[str], None],
               listening: threading.Event) -> None:
        for line in proc.stderr:
            if not listening.is_set() and line.startswith("collect: listening"):
                listening.set()
                continue
            stopped = STOPPED.match(line)
            if stopped:
                self.totals[number] = tuple(int(n) for n in stopped.groups())
            echo(f"worker {number}: {line.rstrip()}")


#: A collector's last line (``gepa_trace.cli.collect``), which ``Workers`` adds up.
STOPPED_LINE = ("collect: stopped; {} spans stored in {} transactions from {} requests, "
                "{} rejected")
STOPPED = re.compile(re.escape(STOPPED_LINE).replace(r"\{\}", r"(\d+)"))


#: The first process's pid, in a worker's environment (``stop_with_first``).
FIRST_PID = "GEPA_TRACE_COLLECT_FIRST_PID"


def stop_with_first() -> None:
    """In a worker: be sent SIGTERM when the first process ends, however it ends
    (SIGKILL included), so no worker is left serving the ports alone (Linux; elsewhere
    a worker outlives a killed first process)."""
    first = os.environ.get(FIRST_PID)
    if not first:
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(first):  # it ended before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def worker_environment(store_url: str, token: str | None) -> dict[str, str]:
    """The workers' environment: ours, with the store and the token in it."""
    env = dict(os.environ, GEPA_TRACE_STORE=store_url)
    env[FIRST_PID] = str(os.getpid())
    env.pop("GEPA_TRACE_COLLECT_TOKEN", None)
    if token:
        env["GEPA_TRACE_COLLECT_TOKEN"] = token
    return env
