"""A failing store: the collector's log holds no span content, and says so once."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy.exc

from gepa_trace.collectors.otlp import Collector, CollectorConfig
from gepa_trace.collectors.otlp_writer import SpanWriter, WriteFailed
from gepa_trace.store import forget_store, open_store

MARKER = "secret-user-text-7f3a"


class _FlakyCommit:
    def __init__(self):
        self.broken = True
        self.stored = 0

    def __call__(self, store, prepared):
        if self.broken:
            raise sqlalchemy.exc.OperationalError(
                "INSERT INTO spans VALUES (?)", [(MARKER,)],
                Exception("attempt to write a readonly database"))
        self.stored += len(prepared)


def post(port, body, path, method="POST"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


@pytest.fixture
def writer(sqlite_url):
    store = open_store(sqlite_url)
    commit = _FlakyCommit()
    w = SpanWriter(store, prepare=lambda spans: list(spans), commit=commit)
    yield w, commit
    w.close(5)


def test_failed_writes_log_no_span_text_and_are_rate_limited(writer, caplog):
    w, commit = writer
    caplog.set_level(logging.INFO, logger="gepa_trace.collectors.otlp_writer")
    for _ in range(20):
        with pytest.raises(WriteFailed) as failed:
            w.write([{"name": MARKER}], timeout=10)
        assert failed.value.retryable and MARKER not in str(failed.value)
    assert MARKER not in caplog.text and "INSERT" not in caplog.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "readonly database" in warnings[0].getMessage()
    assert w.failures.failing

    commit.broken = False
    w.write([{"name": "ok"}], timeout=10)
    assert commit.stored == 1 and not w.failures.failing
    assert "works again (19 more failed writes" in caplog.text


def test_healthz_is_503_degraded_while_writes_fail_and_ok_after(sqlite_url):
    commit = _FlakyCommit()
    store = open_store(sqlite_url)
    writer = SpanWriter(store, prepare=lambda spans: list(spans), commit=commit)
    collector = Collector(store, CollectorConfig(http_port=0, grpc_port=0, token=None),
                          writer=writer).start()
    try:
        with pytest.raises(WriteFailed):
            collector.writer.write([{"name": MARKER}], timeout=10)
        response, data = post(collector.http_port, None, method="GET", path="/healthz")
        body = json.loads(data)
        assert response.status == 503 and body["status"] == "degraded"
        assert body["store"]["writable"] is False and MARKER not in data.decode()
        commit.broken = False
        collector.writer.write([{"name": "ok"}], timeout=10)
        response, data = post(collector.http_port, None, method="GET", path="/healthz")
        assert response.status == 200 and json.loads(data)["status"] == "ok"
    finally:
        collector.stop(grace=5)


def _export(port, trace: int) -> int:
    from test_collector_http import PB, make_request

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/traces", make_request(2, seed=trace).SerializeToString(),
                 {"Content-Type": PB})
    status = conn.getresponse().status
    conn.close()
    return status


def test_a_store_read_only_then_writable_again_is_written_without_restart(sqlite_url,
                                                                          caplog):
    from readonly import set_read_only
    from test_collector_http import count_spans

    path = Path(sqlite_url.removeprefix("sqlite:///"))
    store = open_store(sqlite_url)
    collector = Collector(store, CollectorConfig(http_port=0, grpc_port=0, token=None)).start()
    try:
        assert _export(collector.http_port, 1) == 200
        set_read_only(path, True)
        try:
            assert [_export(collector.http_port, t) for t in (2, 3, 4)] == [503] * 3
            response, data = post(collector.http_port, None, method="GET", path="/healthz")
            assert response.status == 503 and json.loads(data)["status"] == "degraded"
        finally:
            set_read_only(path, False)
        assert _export(collector.http_port, 5) == 200
        response, _ = post(collector.http_port, None, method="GET", path="/healthz")
        assert response.status == 200
        assert count_spans(store) == 4
    finally:
        collector.stop(grace=5)


def test_a_deleted_store_file_is_recreated_and_written_without_restart(sqlite_url, caplog):
    from test_collector_http import count_spans

    path = Path(sqlite_url.removeprefix("sqlite:///"))
    collector = Collector(open_store(sqlite_url),
                          CollectorConfig(http_port=0, grpc_port=0, token=None)).start()
    try:
        assert _export(collector.http_port, 1) == 200
        for f in path.parent.glob(f"{path.name}*"):
            f.unlink()
        assert _export(collector.http_port, 2) == 200  # a 200 means stored: in the new file
        assert "was deleted or replaced; recreating it" in caplog.text
        assert path.exists() and count_spans(collector.store) == 2
        assert _export(collector.http_port, 3) == 200
        assert count_spans(open_store(sqlite_url)) == 4
        response, data = post(collector.http_port, None, method="GET", path="/healthz")
        assert response.status == 200 and json.loads(data)["store"]["writable"] is True
    finally:
        collector.stop(grace=5)


def test_a_store_file_replaced_by_another_is_reopened_and_written(sqlite_url, tmp_path):
    from test_collector_http import count_spans

    path = Path(sqlite_url.removeprefix("sqlite:///"))
    other = f"sqlite:///{tmp_path / 'other.db'}"
    open_store(other, create=True)
    forget_store(other)
    collector = Collector(open_store(sqlite_url),
                          CollectorConfig(http_port=0, grpc_port=None)).start()
    try:
        assert _export(collector.http_port, 1) == 200
        for f in path.parent.glob(f"{path.name}-*"):
            f.unlink()
        (tmp_path / "other.db").replace(path)  # e.g. a backup restored over it
        assert _export(collector.http_port, 2) == 200
        assert count_spans(open_store(sqlite_url)) == 2  # only the new file's spans
    finally:
        collector.stop(grace=5)


def test_healthz_reports_the_queue_and_its_lag_while_a_commit_waits(sqlite_url):
    release = threading.Event()

    def slow_commit(store, prepared):
        release.wait(10)

    writer = SpanWriter(open_store(sqlite_url), prepare=lambda spans: list(spans),
                        commit=slow_commit)
    collector = Collector(writer.store, CollectorConfig(http_port=0, grpc_port=None),
                          writer=writer).start()
    try:
        sender = threading.Thread(target=_export, args=(collector.http_port, 1))
        sender.start()
        time.sleep(0.5)
        _, data = post(collector.http_port, None, method="GET", path="/healthz")
        queue = json.loads(data)["queue"]
        assert queue["pending_requests"] == 1 and queue["pending_spans"] == 2
        assert queue["lag_s"] >= 0.3
        release.set()
        sender.join(10)
        _, data = post(collector.http_port, None, method="GET", path="/healthz")
        queue = json.loads(data)["queue"]
        assert queue == {"pending_requests": 0, "pending_spans": 0, "lag_s": 0.0}
    finally:
        release.set()
        collector.stop(grace=5)


@pytest.mark.postgres
def test_a_postgresql_connection_ended_by_the_server_between_writes_fails_no_request(pg_url):
    # The writer keeps its connection between transactions (no ping each time); when the
    # server ends it (a restart, an idle timeout), the next write still succeeds.
    import uuid

    import sqlalchemy as sa
    from test_collector_http import count_spans

    name = f"gepa-writer-{uuid.uuid4().hex[:8]}"
    store = open_store(f"{pg_url}&application_name={name}")
    writer = SpanWriter(store)

    def span(n: int) -> dict:
        return {"trace_id": f"{n:032x}", "span_id": f"{n:016x}", "name": "s",
                "start_ns": 10**18 + n, "end_ns": 10**18 + n + 5, "attributes": {},
                "resource": {}}

    try:
        writer.write([span(1)], timeout=30)
        with store.engine.connect() as conn:
            ended = conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name AND pid <> pg_backend_pid()"),
                {"name": name}).scalar_one()
        assert ended == 1  # the writer's own
        writer.write([span(2)], timeout=30)
        writer.write([span(3)], timeout=30)
        assert count_spans(store) == 3 and not writer.failures.failing
    finally:
        writer.close(10)
        forget_store(f"{pg_url}&application_name={name}")
