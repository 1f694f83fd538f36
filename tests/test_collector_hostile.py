"""The collector under hostile clients (issue 19): gzip-expanded span floods, concurrent
large requests, a thousand slow connections, overflowing timestamps, slow heads and
bodies. Memory stays under ``--max-memory-mb`` (measured as the collector process's
VmHWM), ``/healthz`` keeps answering, and nothing acknowledged is lost.

The numbers are scaled down from the issue's (1.4 MB gzip -> 750 MB decoded, 8 at once;
1,100 slow clients) so that each case takes a few seconds; the shapes are the same. The
gRPC flood runs with the collector's default limits. The latencies measured are printed
(``pytest -s``) for bench/RESULTS.md.
"""

from __future__ import annotations

import base64
import http.client
import json
import resource
import select
import socket
import threading
import time
import zlib
from typing import Self

import grpc
import pytest
import sqlalchemy as sa
from collector_process import CollectorProcess
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from protobuf_wire import field, varint

from gepa_trace.collectors.otlp import Collector, CollectorConfig
from gepa_trace.store import forget_store, open_store

PB = "application/x-protobuf"
NOW = time.time_ns()


def tiny_span(trace: int, span: int, start: int = NOW - 10**9, end: int | None = None
              ) -> bytes:
    """A span with ids and times only (46 bytes): the cheapest span to send, and the
    costliest per byte to decode."""
    end = start + 1000 if end is None else end
    return (field(1, trace.to_bytes(16, "big")) + field(2, span.to_bytes(8, "big"))
            + b"\x39" + start.to_bytes(8, "little") + b"\x41" + end.to_bytes(8, "little"))


def request_of(spans: list[bytes]) -> bytes:
    """An ExportTraceServiceRequest: one resource, one scope, these encoded spans."""
    scope = b"".join(field(2, s) for s in spans)
    return field(1, field(2, scope))


def gzip_flood(inflated_mb: int) -> bytes:
    """A gzip body of ~``inflated_mb`` MB of identical tiny spans (a ~1000x bomb that is
    a valid request), compressed piece by piece so the test never holds it inflated."""
    one = field(2, tiny_span(1, 1))
    block = one * ((1 << 20) // len(one))
    count = inflated_mb
    scope_len = len(block) * count
    scope_head = varint(2 << 3 | 2) + varint(scope_len)
    rs_len = len(scope_head) + scope_len
    head = varint(1 << 3 | 2) + varint(rs_len) + scope_head
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(head)] + [packer.compress(block) for _ in range(count)]
    return b"".join(parts + [packer.flush()])


def _post(port: int, body: bytes, headers: dict | None = None, timeout: float = 30
          ) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/traces", body, {"Content-Type": PB, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def _send_until_acked(port: int, body: bytes, statuses: list[int], deadline: float) -> bool:
    """As an OTLP exporter does: retry 429/503 (after a short pause) until a 200."""
    while time.monotonic() < deadline:
        status, _, _ = _post(port, body)
        statuses.append(status)
        if status == 200:
            return True
        assert status in (429, 503), status
        time.sleep(0.1)
    return False


class HealthProbe:
    """Polls GET /healthz every ``every_s`` on a fresh connection, timing each answer."""

    def __init__(self, port: int, every_s: float = 0.1):
        self.port, self.every_s = port, every_s
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                json.loads(response.read())
                conn.close()
            except (OSError, ValueError) as exc:
                self.failures.append(repr(exc))
                continue
            self.latencies.append(time.perf_counter() - started)

    def report(self, label: str) -> str:
        lat = sorted(self.latencies)
        text = (f"{label}: /healthz answered {len(lat)} times, failed {len(self.failures)}; "
                f"median {lat[len(lat) // 2] * 1000:.1f} ms, p90 "
                f"{lat[len(lat) * 9 // 10] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms, "
                f"{sum(x > 0.1 for x in lat)} over 100 ms")
        print(text)
        return text


def _memory_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def _stored(url: str) -> int:
    store = open_store(url)
    with store.read() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM spans")).scalar()
    forget_store(url)
    return count


@pytest.fixture
def db_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'hostile.db'}"
    open_store(url, create=True)
    forget_store(url)
    return url


# -- memory ----------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_gzip_span_floods_are_refused_before_decoding_and_memory_stays_under_the_bound(
        db_url):
    bound_mb = 200
    process = CollectorProcess(db_url, "--max-memory-mb", str(bound_mb), "--max-body-mb", "256")
    try:
        base_kb = _memory_kb(process.proc.pid, "VmRSS")
        flood = gzip_flood(150)  # 150 MB of tiny spans, ~3.3M of them: 5+ GB if decoded
        assert len(flood) < 2_000_000  # the 1.4 MB gzip body
        answers: list[int] = []
        acked: list[int] = []
        legit = [request_of([tiny_span(1000 + r, i + 1) for i in range(50)]) for r in range(20)]

        def flooder() -> None:
            for _ in range(5):
                answers.append(_post(process.http_port, flood,
                                     {"Content-Encoding": "gzip"})[0])

        def exporter() -> None:
            statuses: list[int] = []
            for index, body in enumerate(legit):
                if _send_until_acked(process.http_port, body, statuses,
                                     time.monotonic() + 60):
                    acked.append(index)

        with HealthProbe(process.http_port) as probe:
            threads = [threading.Thread(target=flooder) for _ in range(6)]
            threads.append(threading.Thread(target=exporter))
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
        probe.report("6 gzip floods x5 + 1 exporter")
        peak_kb = _memory_kb(process.proc.pid, "VmHWM")
        print(f"collector RSS before {base_kb // 1024} MB, peak {peak_kb // 1024} MB "
              f"(bound {bound_mb} MB)")
        assert sorted(set(answers)) <= [413, 429] and len(answers) == 30
        assert not probe.failures and probe.latencies
        assert max(probe.latencies) < 1.0
        assert peak_kb < base_kb + bound_mb * 1024
        assert len(acked) == len(legit)
    finally:
        code, stderr = process.terminate()
    assert code == 0, stderr
    assert _stored(db_url) == 20 * 50  # all acknowledged spans, none of the flood's


@pytest.mark.timeout(120)
def test_concurrent_large_requests_share_the_bound_and_every_acked_span_is_stored(db_url):
    bound_mb, senders, per_request = 48, 8, 8000
    process = CollectorProcess(db_url, "--max-memory-mb", str(bound_mb))
    try:
        base_kb = _memory_kb(process.proc.pid, "VmRSS")
        bodies = [request_of([tiny_span(s + 1, i + 1) for i in range(per_request)])
                  for s in range(senders)]
        statuses: list[int] = []
        acked: list[bool] = []
        with HealthProbe(process.http_port) as probe:
            threads = [threading.Thread(target=lambda b=b: acked.append(_send_until_acked(
                process.http_port, b, statuses, time.monotonic() + 90))) for b in bodies]
            for t in threads:
                t.start()
            for t in threads:
                t.join(100)
            conn = http.client.HTTPConnection("127.0.0.1", process.http_port, timeout=5)
            conn.request("GET", "/healthz")
            memory = json.loads(conn.getresponse().read())["memory"]
            conn.close()
        probe.report(f"{senders} concurrent requests of {per_request} spans")
        peak_kb = _memory_kb(process.proc.pid, "VmHWM")
        print(f"collector RSS before {base_kb // 1024} MB, peak {peak_kb // 1024} MB; "
              f"answers {sorted(statuses)}; memory {memory}")
        assert acked == [True] * senders
        assert 429 in statuses  # they did not all fit at once: the bound was in force
        assert memory["peak_bytes"] <= memory["limit_bytes"] == bound_mb << 20
        assert memory["admitted_bytes"] == 0  # every ticket was given back
        assert not probe.failures and max(probe.latencies) < 1.0
        assert peak_kb < base_kb + bound_mb * 1024 + 64 * 1024  # + the writer's queue
    finally:
        code, stderr = process.terminate()
    assert code == 0, stderr
    assert _stored(db_url) == senders * per_request


def test_a_gzip_bomb_is_refused_while_inflating_with_no_more_taken_than_the_bound():
    from gepa_trace.collectors.admission import INFLATE_FACTOR, MemoryBudget, TooLarge
    from gepa_trace.collectors.otlp_decode import INFLATE_STEP, decode_request

    budget = MemoryBudget(64 << 20)
    inflated: list[int] = []
    with budget.ticket() as ticket:
        take = ticket.take

        def counting_take(n: int) -> None:
            take(n)
            inflated.append(n)  # only what was admitted

        ticket.take = counting_take  # type: ignore[method-assign]
        with pytest.raises(TooLarge):
            decode_request(gzip_flood(150), PB, "gzip", 256 << 20, ticket)
        assert budget.peak <= budget.limit
    assert budget.used == 0
    # refused after ~64/6 MB of the 150 MB were inflated, one step at a time
    assert sum(inflated) <= budget.limit
    assert sum(inflated) // INFLATE_FACTOR[PB] >= (64 << 20) // INFLATE_FACTOR[PB] - INFLATE_STEP


def _grpc_export(channel: grpc.Channel):
    """The raw TraceService/Export method: bytes in, bytes out."""
    return channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                               request_serializer=None, response_deserializer=None)


def _finished_spans(batches: int, per_batch: int) -> list:
    """Real SDK spans (ReadableSpan), ``batches`` lists of ``per_batch``, one trace each."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    finished = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    tracer = provider.get_tracer("hostile-test")
    for b in range(batches):
        with tracer.start_as_current_span(f"run-{b}"):
            for i in range(per_batch - 1):
                with tracer.start_as_current_span(f"step-{i}") as span:
                    span.set_attribute("input.value", "x" * 200)
    spans = list(finished.get_finished_spans())
    provider.shutdown()
    return [spans[b * per_batch:(b + 1) * per_batch] for b in range(batches)]


def _ids(spans) -> set[tuple[str, str]]:
    return {(f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}") for s in spans}


@pytest.mark.timeout(150)
def test_grpc_floods_over_and_just_under_the_default_message_limit_keep_memory_bounded(
        db_url):
    """With the collector's default limits: messages over the 4 MiB gRPC limit (15 MB
    gzip, 4.4 MB plain) are refused by grpc before Python sees them; messages just under
    it (3.9 MB gzip of 85k spans, each rejected for ending before it starts) are
    decoded within the memory bound; a real OTLP exporter beside them has every span it
    was acknowledged stored."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    process = CollectorProcess(db_url)  # default limits
    try:
        base_kb = _memory_kb(process.proc.pid, "VmRSS")
        one = tiny_span(1, 1)
        over_gzip = request_of([one] * (15_000_000 // (len(one) + 2)))  # 312k spans
        over_plain = request_of([one] * (4_400_000 // (len(one) + 2)))
        inverted = tiny_span(3, 3, start=NOW, end=NOW - 1000)
        under = request_of([inverted] * ((int(3.9 * 2**20) - 16) // (len(inverted) + 2)))
        assert len(over_plain) > 4 << 20 > len(under) > 4_000_000
        codes: dict[str, list[grpc.StatusCode]] = {"over": [], "under": []}
        details: list[str] = []
        rejected: list[int] = []
        batches = _finished_spans(20, 50)
        acked: list[set[tuple[str, str]]] = []

        def flooder() -> None:
            with grpc.insecure_channel(f"127.0.0.1:{process.grpc_port}") as channel:
                export = _grpc_export(channel)
                for _ in range(3):
                    for kind, body, gzip in (("over", over_gzip, True),
                                             ("under", under, True),
                                             ("over", over_plain, False)):
                        try:
                            reply = export(body, timeout=30, compression=(
                                grpc.Compression.Gzip if gzip else None))
                        except grpc.RpcError as exc:
                            codes[kind].append(exc.code())
                            details.append(exc.details() or "")
                            continue
                        codes[kind].append(grpc.StatusCode.OK)
                        rejected.append(ExportTraceServiceResponse.FromString(
                            reply).partial_success.rejected_spans)

        def exporter() -> None:  # the real one: it retries UNAVAILABLE itself, with backoff
            otlp = OTLPSpanExporter(endpoint=f"127.0.0.1:{process.grpc_port}", insecure=True)
            deadline = time.monotonic() + 90
            for batch in batches:
                while time.monotonic() < deadline:
                    if otlp.export(batch) is SpanExportResult.SUCCESS:
                        acked.append(_ids(batch))
                        break
            otlp.shutdown()

        with HealthProbe(process.http_port, every_s=0.05) as probe:
            threads = [threading.Thread(target=flooder) for _ in range(4)]
            threads.append(threading.Thread(target=exporter))
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        probe.report("4 gRPC floods (15 MB gzip, 4.4 MB, 3.9 MB gzip) x3 + 1 OTLP exporter")
        peak_kb = _memory_kb(process.proc.pid, "VmHWM")
        print(f"gRPC, default limits: collector RSS before {base_kb // 1024} MB, peak "
              f"{peak_kb // 1024} MB; over the limit {sorted({c.name for c in codes['over']})}"
              f", just under {sorted(c.name for c in codes['under'])}")
        # over the limit: grpc's own answer, in C, naming the limit in bytes (plain)
        assert codes["over"] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 24
        assert any("vs. 4194304" in d for d in details)
        # just under: decoded and answered (every span rejected), or UNAVAILABLE when
        # the memory bound was full at that moment; at least one got through
        assert set(codes["under"]) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
        assert grpc.StatusCode.OK in codes["under"]
        assert set(rejected) == {len(under) // (len(inverted) + 2)}
        # /healthz within 100 ms is measured and printed (bench/RESULTS.md); asserted
        # loosely here, since a shared 2-core machine stalls any process at times
        assert not probe.failures and max(probe.latencies) < 1.0
        assert peak_kb < 1 << 20  # the documented bound: under 1 GB with the defaults
        assert len(acked) == len(batches)
    finally:
        code, stderr = process.terminate()
    assert code == 0, stderr
    # the 24 refused calls are logged in a line a minute at most, naming the flag
    assert 1 <= stderr.count("--max-grpc-message-mb") <= 3, stderr
    store = open_store(db_url)
    with store.read() as conn:
        stored = {tuple(r) for r in conn.execute(sa.text("SELECT trace_id, span_id FROM spans"))}
    forget_store(db_url)
    assert stored == set().union(*acked)  # every acknowledged span, none of the floods'


def test_grpc_refuses_a_message_over_its_own_limit_plain_or_once_inflated_before_python(
        sqlite_url):
    config = CollectorConfig(http_port=0, grpc_port=0, max_body_bytes=256 << 10,
                             max_grpc_message_bytes=1 << 20)
    one = tiny_span(1, 1)
    over = request_of([one] * ((2 << 20) // (len(one) + 2)))  # 2 MB, gzip to a few KB
    under = request_of([tiny_span(4, i + 1) for i in range((512 << 10) // (len(one) + 2))])
    with Collector(open_store(sqlite_url), config) as collector:
        with grpc.insecure_channel(f"127.0.0.1:{collector.grpc_port}") as channel:
            export = _grpc_export(channel)
            with pytest.raises(grpc.RpcError) as plain:
                export(over, timeout=30)
            with pytest.raises(grpc.RpcError) as inflated:
                export(over, timeout=30, compression=grpc.Compression.Gzip)
            assert collector.receiver.budget.peak == 0  # refused by grpc: never admitted
            assert collector.receiver.stats.requests == 0
            # the gRPC limit, not the HTTP one: 512 KB is over --max-body-mb here
            assert export(under, timeout=30) == b""
        assert _post(collector.http_port, under)[0] == 413
    assert plain.value.code() == inflated.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # grpc's own words: the limit in bytes when sent plain, none once inflated
    assert plain.value.details() == (f"SERVER: Received message larger than max "
                                     f"({len(over)} vs. {1 << 20})")
    assert "larger than max" in inflated.value.details()
    assert _stored(sqlite_url) == len(under) // (len(one) + 2)


@pytest.mark.timeout(60)
def test_max_grpc_message_mb_sets_the_limit_grpc_enforces(db_url):
    # The log line about calls ended without a message is not pinned here: grpc does not
    # always hand such a call to the service (MessagesNotReceived's own test pins the
    # line).
    process = CollectorProcess(db_url, "--max-grpc-message-mb", "0.5")
    try:
        one = tiny_span(1, 1)
        with (grpc.insecure_channel(f"127.0.0.1:{process.grpc_port}") as channel,
              pytest.raises(grpc.RpcError) as refused):
            _grpc_export(channel)(request_of([one] * (600_000 // (len(one) + 2))), timeout=30)
    finally:
        code, stderr = process.terminate()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"vs. {1 << 19})" in refused.value.details()
    assert code == 0, stderr


def test_calls_ended_without_a_message_are_logged_once_a_minute_with_a_count(caplog):
    from gepa_trace.collectors.otlp_grpc import MessagesNotReceived

    not_received = MessagesNotReceived(4 << 20)
    with caplog.at_level("WARNING", logger="gepa_trace.collectors.otlp_grpc"):
        for _ in range(5):
            not_received.happened()
        not_received._logged_at -= 61  # a minute later
        not_received.happened()
    lines = [r.getMessage() for r in caplog.records]
    assert not_received.count == 6
    assert len(lines) == 2
    assert lines[0].startswith("gRPC: 1 Export call(s) ended before their message")
    assert "larger than 4 MiB once inflated (--max-grpc-message-mb" in lines[0]
    assert lines[1].startswith("gRPC: 5 Export call(s)")


def test_one_large_request_in_flight_leaves_room_for_the_others(sqlite_url):
    store = open_store(sqlite_url)
    config = CollectorConfig(http_port=0, grpc_port=None, max_memory_bytes=64 << 20)
    with Collector(store, config) as collector:
        big = collector.receiver.budget.ticket()
        big.take(40 << 20)  # a large request being decoded holds 40 of the 64 MB
        small = request_of([tiny_span(7, i + 1) for i in range(100)])
        assert _post(collector.http_port, small)[0] == 200
        big.take((24 << 20) - (64 << 10))  # 64 KB left: less than 100 spans need
        status, body, headers = _post(collector.http_port,
                                      request_of([tiny_span(8, i + 1) for i in range(100)]))
        assert status == 429 and headers.get("Retry-After") == "1"
        assert b"memory bound" in body
        big.release()
        assert collector.receiver.budget.used == 0
    with store.read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM spans")).scalar() == 100


def test_a_request_larger_than_the_writer_queue_does_not_make_the_others_wait_for_it(
        sqlite_url):
    from gepa_trace.collectors.otlp_writer import SpanWriter
    from gepa_trace.store.spans import prepare_spans, write_prepared

    def slow_commit(store, prepared):  # 3 ms per span: the big request takes 1.5 s
        time.sleep(0.003 * sum(len(p.rows) for p in prepared))
        return write_prepared(store, prepared)

    store = open_store(sqlite_url)
    writer = SpanWriter(store, max_pending_spans=150, max_batch_spans=100,
                        prepare=prepare_spans, commit=slow_commit)
    with Collector(store, CollectorConfig(http_port=0, grpc_port=None),
                   writer=writer) as collector:
        big_answer: list[int] = []
        big = threading.Thread(target=lambda: big_answer.append(_post(
            collector.http_port, request_of([tiny_span(20, i + 1) for i in range(500)]))[0]))
        big.start()
        time.sleep(0.4)  # the big request is being committed, slice by slice
        assert writer.pending_spans <= 150
        small = _post(collector.http_port, request_of([tiny_span(21, i + 1)
                                                       for i in range(10)]))[0]
        big.join(30)
        assert small == 200 and big_answer == [200]
    with store.read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM spans")).scalar() == 510


def test_a_request_that_alone_exceeds_the_bound_gets_413_over_http_and_grpc(sqlite_url):
    store = open_store(sqlite_url)
    config = CollectorConfig(http_port=0, grpc_port=0, max_memory_bytes=8 << 20)
    body = request_of([tiny_span(9, i + 1) for i in range(10_000)])  # ~16 MB decoded
    with Collector(store, config) as collector:
        status, message, _ = _post(collector.http_port, body)
        assert status == 413 and b"smaller batches" in message
        with grpc.insecure_channel(f"127.0.0.1:{collector.grpc_port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Export(trace_service_pb2.ExportTraceServiceRequest.FromString(body),
                            timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert collector.receiver.budget.used == 0


# -- connections -----------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_1100_slow_clients_are_cut_off_and_healthz_answers_throughout(db_url):
    clients = 1100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < clients + 200:
        if hard != resource.RLIM_INFINITY and hard < clients + 200:
            pytest.skip(f"open-file hard limit {hard} is below {clients + 200}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (clients + 200, hard))
    process = CollectorProcess(db_url)
    slow: list[socket.socket] = []
    try:
        head = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf"
        with HealthProbe(process.http_port) as probe:
            for _ in range(clients):
                sock = socket.create_connection(("127.0.0.1", process.http_port), timeout=5)
                sock.setblocking(False)
                slow.append(sock)
            open_ = set(slow)
            started = time.monotonic()
            position = 0
            while open_ and time.monotonic() - started < 12:  # a byte a second each
                for sock in list(open_):
                    try:
                        sock.send(head[position % len(head):position % len(head) + 1])
                    except OSError:
                        open_.discard(sock)
                poller = select.poll()  # select() cannot take descriptors past 1024
                by_fd = {sock.fileno(): sock for sock in open_}
                for fd in by_fd:
                    poller.register(fd, select.POLLIN)
                for fd, _event in poller.poll(0):
                    sock = by_fd[fd]
                    try:
                        if not sock.recv(4096):
                            open_.discard(sock)
                    except OSError:
                        open_.discard(sock)
                position += 1
                time.sleep(1.0)
            cut_after = time.monotonic() - started
        probe.report(f"{clients} slow clients")
        print(f"all slow clients cut off after {cut_after:.1f} s; {len(open_)} still open")
        assert not open_, f"{len(open_)} slow clients still connected after 12 s"
        assert not probe.failures and max(probe.latencies) < 1.0
        ok = _post(process.http_port, request_of([tiny_span(5, 1)]))[0]
        assert ok == 200
    finally:
        for sock in slow:
            sock.close()
        code, stderr = process.terminate()
    assert code == 0, stderr


def _raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if still open after ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    try:
        while True:
            piece = sock.recv(4096)
            if not piece:
                return data
            data += piece
    except TimeoutError:
        return None


def test_idle_slow_head_and_slow_body_connections_are_closed_at_their_deadlines(sqlite_url):
    config = CollectorConfig(http_port=0, grpc_port=None, idle_timeout_s=0.5,
                             header_timeout_s=0.5, request_timeout_s=1.0)
    with Collector(open_store(sqlite_url), config) as collector:
        port = collector.http_port
        idle = _raw(port)
        assert _closed_within(idle, 5) == b""  # keep-alive with nothing sent: closed

        slow_head = _raw(port)
        slow_head.sendall(b"POST /v1/traces HTTP/1.1\r\n")
        time.sleep(0.3)
        slow_head.sendall(b"Content-Type: application/x-protobuf\r\n")
        assert _closed_within(slow_head, 5) is not None  # head not done in 0.5 s

        slow_body = _raw(port)
        slow_body.sendall(b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf"
                          b"\r\nContent-Length: 100\r\n\r\n0123456789")
        answer = _closed_within(slow_body, 5)
        assert answer is not None and answer.startswith(b"HTTP/1.1 408")
        for sock in (idle, slow_head, slow_body):
            sock.close()
        assert _post(port, request_of([tiny_span(3, 1)]))[0] == 200


def test_connections_past_the_cap_get_503_but_healthz_is_answered(sqlite_url):
    config = CollectorConfig(http_port=0, grpc_port=None, max_connections=4)
    with Collector(open_store(sqlite_url), config) as collector:
        port = collector.http_port
        held = [_raw(port) for _ in range(4)]
        deadline = time.monotonic() + 5
        while collector.receiver.open_connections() < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, _body, headers = _post(port, request_of([tiny_span(4, 1)]))
        assert status == 503 and headers.get("Retry-After") == "1"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        health = json.loads(response.read())
        assert response.status == 200 and health["connections"] == {"open": 4, "limit": 4}
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 5
        while collector.receiver.open_connections() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _post(port, request_of([tiny_span(4, 1)]))[0] == 200


# -- timestamps ------------------------------------------------------------------------

_BAD_TIMES = [  # (start, end): each refused alone
    (2**63, 2**63 + 5),  # overflows the BIGINT column
    (2**64 - 1, 2**64 - 1),
    (NOW - 10**9, 2**63),  # end overflows
    (NOW + 3 * 24 * 3600 * 10**9, NOW + 3 * 24 * 3600 * 10**9 + 5),  # far future
    (NOW - 10**9, NOW - 2 * 10**9),  # ends before it starts
    (0, 0),  # no start time
]


def _time_request() -> bytes:
    spans = [tiny_span(11, 1)] + [tiny_span(11, i + 2, s, e)
                                  for i, (s, e) in enumerate(_BAD_TIMES)]
    return request_of(spans)


def test_overflowing_and_bad_times_are_rejected_one_by_one_over_protobuf_json_and_grpc(
        sqlite_url):
    from google.protobuf import json_format

    store = open_store(sqlite_url)
    with Collector(store, CollectorConfig(http_port=0, grpc_port=0)) as collector:
        status, body, _ = _post(collector.http_port, _time_request())
        answer = ExportTraceServiceResponse.FromString(body)
        assert status == 200 and answer.partial_success.rejected_spans == len(_BAD_TIMES)
        assert "int64" in answer.partial_success.error_message

        request = trace_service_pb2.ExportTraceServiceRequest.FromString(_time_request())
        data = json.loads(json_format.MessageToJson(request))
        spans = data["resourceSpans"][0]["scopeSpans"][0]["spans"]
        for span in spans:  # OTLP/JSON ids are hex
            for key in ("traceId", "spanId"):
                span[key] = base64.b64decode(span[key]).hex()
            span["traceId"] = "0" * 31 + "c"
        spans.append(dict(spans[0], spanId="00000000000000ff", startTimeUnixNano="-5"))
        spans.append(dict(spans[0], spanId="00000000000000fe",
                          endTimeUnixNano=str(2**64)))
        status, body, _ = _post(collector.http_port, json.dumps(data).encode(),
                                {"Content-Type": "application/json"})
        assert status == 200, body
        assert json.loads(body)["partialSuccess"]["rejectedSpans"] == str(len(_BAD_TIMES) + 2)

        with grpc.insecure_channel(f"127.0.0.1:{collector.grpc_port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            grpc_request = trace_service_pb2.ExportTraceServiceRequest.FromString(
                _time_request().replace((11).to_bytes(16, "big"), (13).to_bytes(16, "big")))
            reply = stub.Export(grpc_request, timeout=30)
        assert reply.partial_success.rejected_spans == len(_BAD_TIMES)
    with store.read() as conn:
        stored = conn.execute(sa.text("SELECT trace_id FROM spans ORDER BY trace_id")).all()
    assert len(stored) == 3  # the one good span of each request
