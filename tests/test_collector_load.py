"""Load and process lifecycle of the collector: exactly-once storage under 8 concurrent
exporters, SIGTERM drains what was accepted, SIGKILL loses nothing that got a 200.

The full 200,000-span run is bench/bench_collector.py; here 20,000 keeps CI fast."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from collector_process import CollectorProcess
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gepa_trace.collectors.otlp import Collector, CollectorConfig
from gepa_trace.store import forget_store, open_store

_BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_collector.py"
_spec = importlib.util.spec_from_file_location("bench_collector", _BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _ids_of(body: bytes) -> set[tuple[str, str]]:
    request = ExportTraceServiceRequest.FromString(body)
    return {(s.trace_id.hex(), s.span_id.hex()) for rs in request.resource_spans
            for ss in rs.scope_spans for s in ss.spans}


def _stored(store) -> list[tuple[str, str]]:
    with store.read() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT trace_id, span_id FROM spans"))]


@pytest.mark.timeout(300)
def test_eight_exporters_20k_spans_over_http_and_grpc_stored_exactly_once(store_url):
    store = open_store(store_url)
    http_bodies, http_ids = bench.make_requests(12_000, 500, seed=1)
    grpc_bodies, grpc_ids = bench.make_requests(8_000, 500, seed=2)
    # a small max_pending_spans so that 429s and client retries happen too
    config = CollectorConfig(http_port=0, grpc_port=0, max_pending_spans=3000)
    with Collector(store, config) as collector:
        grpc_thread = threading.Thread(target=bench.send_grpc,
                                       args=(collector.grpc_port, grpc_bodies, 4))
        grpc_thread.start()
        assert bench.send_http(collector.http_port, http_bodies, 4) == len(http_bodies)
        grpc_thread.join(240)
        transactions = collector.writer.transactions
    stored = _stored(store)
    assert len(stored) == len(set(stored)) == 20_000
    assert set(stored) == http_ids | grpc_ids
    assert transactions < len(http_bodies) + len(grpc_bodies)  # group commit happened


@pytest.mark.timeout(120)
def test_sigterm_stops_accepting_finishes_accepted_requests_and_exits_zero(tmp_path):
    url = f"sqlite:///{tmp_path / 'term.db'}"
    process = CollectorProcess(url)
    bodies, _ids = bench.make_requests(6000, 500, seed=3)
    acked: list[int] = []
    stop = threading.Event()
    sender = threading.Thread(target=bench.send_http,
                              args=(process.http_port, bodies, 4, acked, stop))
    sender.start()
    deadline = time.monotonic() + 30
    while not acked and time.monotonic() < deadline:
        time.sleep(0.005)
    started = time.monotonic()
    code, stderr = process.terminate()
    assert time.monotonic() - started < 30
    stop.set()
    sender.join(60)
    assert code == 0, stderr
    assert "stopped;" in stderr
    store = open_store(url)
    stored = set(_stored(store))
    for index in acked:
        assert _ids_of(bodies[index]) <= stored
    forget_store(url)


@pytest.mark.timeout(120)
def test_sigkill_during_load_loses_no_span_that_got_a_200(tmp_path):
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    process = CollectorProcess(url)
    bodies, _ids = bench.make_requests(30_000, 250, seed=4)
    acked: list[int] = []
    stop = threading.Event()
    sender = threading.Thread(target=bench.send_http,
                              args=(process.http_port, bodies, 8, acked, stop))
    sender.start()
    deadline = time.monotonic() + 60
    while len(acked) < 10 and time.monotonic() < deadline:
        time.sleep(0.005)
    process.kill()  # SIGKILL mid-load: no chance to flush anything
    stop.set()
    sender.join(60)
    assert len(acked) >= 10
    store = open_store(url)
    stored = set(_stored(store))
    lost = [i for i in acked if not _ids_of(bodies[i]) <= stored]
    assert not lost, f"{len(lost)} acknowledged requests missing after SIGKILL"
    assert len(acked) < len(bodies)  # it really died mid-load
    forget_store(url)
