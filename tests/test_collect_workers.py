"""`gepa-trace collect --workers N` (issue 19): on PostgreSQL the collector runs as several
processes on the same ports (HTTP and gRPC), each with its own writer; together they
store every span exactly once, stop together on SIGTERM or when the first is killed,
and a worker that dies stops the command loudly. SQLite refuses more than one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import sqlalchemy as sa
from collector_process import CollectorProcess
from test_collector_two_pg import TRACES, _recorded_spans, _send

from gepa_trace.collectors.workers import default_workers
from gepa_trace.store import open_store

pytestmark = pytest.mark.timeout(180)


COLLECT = [sys.executable, "-c", "from gepa_trace.cli import main; main()", "collect"]


def _run_collect(*args: str) -> subprocess.CompletedProcess:
    """`gepa-trace collect ARGS` to its end (one that cannot start)."""
    return subprocess.run([*COLLECT, *args], check=False, capture_output=True, text=True,
                          timeout=60)


def _send_grpc(port: int, spans: list, results: list, start: threading.Barrier) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=30)
    start.wait()
    for i in range(0, len(spans), 100):
        results.append(exporter.export(spans[i:i + 100]).name)
    exporter.shutdown()


def _healthz(port: int) -> dict:
    # a fresh connection each time: the kernel picks the worker per connection
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
        return json.loads(reply.read())


def _worker_pids(port: int, expected: int, tries: int = 400) -> set[int]:
    pids: set[int] = set()
    for _ in range(tries):
        pids.add(_healthz(port)["pid"])
        if len(pids) == expected:
            break
    return pids


def _with_workers(pg_url: str, count: int) -> tuple[CollectorProcess, set[int]]:
    """`gepa-trace collect --workers COUNT`, and the pids of the workers it started."""
    collector = CollectorProcess(pg_url, "--workers", str(count))
    others = _worker_pids(collector.http_port, count) - {collector.proc.pid}
    assert len(others) == count - 1
    return collector, others


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited; only its parent has not reaped it yet
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.postgres
def test_collect_on_postgresql_spreads_clients_over_workers_and_stores_each_span_once(pg_url):
    collector = CollectorProcess(pg_url, "--workers", "3")
    try:
        assert "(3 workers)" in "".join(collector.lines)
        pids = _worker_pids(collector.http_port, 3)
        assert len(pids) == 3, "every worker answers on the shared port"
        spans = _recorded_spans()
        results: list[str] = []
        start = threading.Barrier(7)
        # each exporter holds its own connection: six of them land on several workers
        senders = [threading.Thread(target=_send, args=(collector.http_port,
                                                        spans[n::7], results, start))
                   for n in range(6)]
        senders.append(threading.Thread(target=_send_grpc, args=(
            collector.grpc_port, spans[6::7], results, start)))
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(120)
        assert results and set(results) == {"SUCCESS"}
        served = {_healthz(collector.http_port)["pid"]: None for _ in range(50)}
        assert len(served) > 1
    finally:
        code, err = collector.terminate()
    assert code == 0, err
    assert err.count("collect: stopped;") == 3, err  # each worker finished its requests
    assert (f"collect: all 3 workers stopped; {TRACES * 7} spans stored in "
            in err.splitlines()[-1]), err  # the first adds them up
    assert not any(_alive(pid) for pid in pids)
    with open_store(pg_url).read() as conn:
        stored, distinct = conn.execute(sa.text(
            "SELECT COUNT(*), COUNT(DISTINCT (trace_id, span_id)) FROM spans")).one()
    assert stored == distinct == TRACES * 7


@pytest.mark.postgres
def test_collect_on_postgresql_defaults_to_a_worker_per_cpu(pg_url):
    collector = CollectorProcess(pg_url)
    try:
        expected = default_workers("postgresql")
        assert expected >= 2
        assert len(_worker_pids(collector.http_port, expected)) == expected
        health = _healthz(collector.http_port)
        # the memory bound of requests in flight is divided among the workers
        assert health["memory"]["limit_bytes"] == 512 * 1024 * 1024 // expected
    finally:
        code, err = collector.terminate()
    assert code == 0, err


@pytest.mark.postgres
def test_a_worker_that_dies_stops_the_collector_with_exit_1_naming_it(pg_url):
    collector, others = _with_workers(pg_url, 2)
    first = collector.proc.pid
    (other,) = others
    os.kill(other, signal.SIGKILL)
    try:
        collector.proc.wait(60)
    finally:
        code, err = collector.terminate()
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert f"worker 2 (pid {other}) exited with code -9" in last, err
    assert not _alive(first)


def test_collect_refuses_workers_on_sqlite_in_one_line(sqlite_url):
    proc = _run_collect("--store", sqlite_url, "--http-port", "0", "--grpc-port", "-1",
                        "--workers", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: --workers 2 needs a PostgreSQL store: SQLite takes one writer at a time"]


def test_collect_on_sqlite_is_one_process_and_a_plain_second_collector_cannot_share(
        sqlite_url):
    collector = CollectorProcess(sqlite_url)
    try:
        assert {_healthz(collector.http_port)["pid"] for _ in range(10)} == {
            collector.proc.pid}
        # without --workers the ports are not shared: a second collector fails loudly
        second = _run_collect("--store", sqlite_url, "--http-port", str(collector.http_port),
                              "--grpc-port", "-1")
        assert second.returncode != 0
        assert second.stderr.strip().splitlines()[-1] == (
            f"Error: cannot listen on 127.0.0.1:{collector.http_port}: Address already in use")
    finally:
        code, err = collector.terminate()
    assert code == 0, err


@pytest.mark.postgres
def test_workers_stop_when_the_first_process_is_killed_outright(pg_url):
    collector, others = _with_workers(pg_url, 3)
    collector.kill()  # SIGKILL: the first process cannot stop them itself
    deadline = time.monotonic() + 60
    try:
        while any(_alive(pid) for pid in others) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in others)
    finally:
        for pid in others:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_default_to_one_where_the_kernel_does_not_spread_a_shared_port(
        monkeypatch):
    from gepa_trace.collectors import workers

    assert default_workers("sqlite") == 1
    monkeypatch.setattr(workers.sys, "platform", "darwin")
    assert workers.sharing_unsupported() == (
        "workers share their ports with SO_REUSEPORT, spread only on Linux (this is darwin)")
    assert default_workers("postgresql") == 1


@pytest.mark.postgres
def test_ctrl_c_on_the_terminal_stops_every_worker_with_exit_0(pg_url):
    # Ctrl-C signals the whole foreground process group: the workers get it too
    proc = subprocess.Popen([*COLLECT, "--store", pg_url, "--http-port", "0", "--grpc-port",
                             "-1", "--workers", "3"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("collect: listening"):
            break
    os.killpg(proc.pid, signal.SIGINT)
    err = "".join(lines) + proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, err
    assert "collect: all 3 workers stopped; 0 spans stored" in err, err


def test_a_burst_of_signals_stops_the_collector_and_never_hangs_it(sqlite_url):
    # a handler that took a lock deadlocked when the next signal came in the middle
    for _ in range(3):
        collector = CollectorProcess(sqlite_url)
        for _ in range(50):
            collector.proc.send_signal(signal.SIGTERM)
        try:
            code, err = collector.terminate(timeout=30)
        except subprocess.TimeoutExpired:
            collector.kill()
            raise
        assert code == 0, err
