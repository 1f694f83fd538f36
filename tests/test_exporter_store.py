"""The SQL span exporter: what it stores, and issue 2 acceptance 2 — with the store
unwritable (read-only, locked, PostgreSQL connection dropped) the agent's runs still
return their results, a warning is logged, nothing stored is damaged, and exporting
resumes when the store comes back."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from langchain_core.runnables import RunnableLambda
from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from test_capture_agent import build_agent, case, count, span_rows

import gepa_trace as gt
from gepa_trace.collectors.exporter import SqlSpanExporter, span_to_dict
from gepa_trace.collectors.langchain import SUPPRESS_KEY
from gepa_trace.store import forget_store, open_store

AGENT = "qa-agent"


def finished_spans(n: int = 3):
    """``n`` finished spans of one trace (a root and its children), from the real SDK."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root", attributes={"gepa.agent": "svc",
                                                          "tags": ("a", "b")}) as root:
        for i in range(n - 1):
            with tracer.start_as_current_span(f"child{i}") as child:
                child.add_event("note", {"k": i})
        root.set_status(Status(StatusCode.ERROR, "bad"))
    return memory.get_finished_spans()


def run_agent(i: int) -> str:
    question, query, answer = case(i)
    out = build_agent(query, answer).invoke({"question": question})["answer"]
    assert out == answer
    return out


def test_span_dicts_carry_hex_ids_parents_status_events_and_resource():
    spans = finished_spans(3)
    dicts = {d["name"]: d for d in (span_to_dict(s) for s in spans)}
    root, child = dicts["root"], dicts["child0"]
    assert len(root["trace_id"]) == 32 and len(root["span_id"]) == 16
    assert root["parent_span_id"] is None and child["parent_span_id"] == root["span_id"]
    assert child["trace_id"] == root["trace_id"]
    assert (root["status_code"], root["status_message"]) == ("ERROR", "bad")
    assert list(root["attributes"]["tags"]) == ["a", "b"]
    assert child["events"][0]["name"] == "note" and child["events"][0]["attributes"] == {"k": 0}
    assert root["resource"]["service.name"] == "svc" and root["kind"] == "INTERNAL"
    assert root["start_ns"] <= child["start_ns"] <= child["end_ns"] <= root["end_ns"]


def test_exporter_writes_a_batch_and_ignores_a_repeated_one(store_url):
    exporter = SqlSpanExporter(store_url)
    spans = finished_spans(4)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    rows = span_rows(store_url)
    assert len(rows) == 4 and {r["agent"] for r in rows} >= {"svc"}


def test_exporting_creates_no_spans(sqlite_url):
    inst = gt.instrument(store=sqlite_url, service_name=AGENT)
    exporter = SqlSpanExporter(sqlite_url)
    seen = []

    def probe(*_args):
        # A LangChain run started while writing spans: recorded unless suppressed.
        seen.append(otel_context.get_value(SUPPRESS_KEY))
        RunnableLambda(lambda x: x, name="probe").invoke(1)

    engine = open_store(sqlite_url).engine
    sa.event.listen(engine, "before_cursor_execute", probe)
    try:
        assert exporter.export(finished_spans(2)) is SpanExportResult.SUCCESS
    finally:
        sa.event.remove(engine, "before_cursor_execute", probe)
    assert seen and all(seen)
    assert inst.force_flush()
    inst.shutdown()
    assert sorted(r["name"] for r in span_rows(sqlite_url)) == ["child0", "root"]


def test_a_bug_in_conversion_is_raised_under_pytest_and_reported_otherwise(sqlite_url, caplog):
    broken = [object()]  # not a span
    with pytest.raises(AttributeError):
        SqlSpanExporter(sqlite_url, raise_internal_errors=True).export(broken)
    quiet = SqlSpanExporter(sqlite_url, raise_internal_errors=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gepa_trace.capture"):
        assert quiet.export(broken) is SpanExportResult.FAILURE
        assert quiet.export(broken) is SpanExportResult.FAILURE
    assert len([r for r in caplog.records if "could not write" in r.getMessage()]) == 1


def test_exporter_rejects_a_negative_pending_limit():
    with pytest.raises(ValueError, match="max_pending"):
        SqlSpanExporter("sqlite:///x.db", max_pending=-1)


# --- acceptance 2 ---------------------------------------------------------------------

def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "gepa_trace.capture" and r.levelno == logging.WARNING]


def seed(url: str) -> int:
    """Store a few runs the normal way; returns the span count."""
    inst = gt.instrument(store=url, service_name=AGENT)
    run_agent(0)
    run_agent(1)
    assert inst.force_flush()
    inst.shutdown()
    return count(url, "spans")


def integrity(path: str) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def test_read_only_store_leaves_the_agent_running(sqlite_url, caplog):
    before = seed(sqlite_url)
    forget_store(sqlite_url)
    path = sqlite_url.removeprefix("sqlite:///")
    read_only = f"sqlite:///file:{path}?mode=ro&uri=true"
    with caplog.at_level(logging.WARNING, logger="gepa_trace.capture"):
        inst = gt.instrument(store=read_only, service_name=AGENT)
        try:
            for i in range(3):
                run_agent(i)
            assert not inst.force_flush()
            assert not inst.force_flush()
        finally:
            inst.shutdown()
        forget_store(read_only)
    found = warnings_of(caplog)
    assert any("readonly" in w or "read-only" in w for w in found), found
    assert len([w for w in found if "could not write" in w]) == 1  # once, not per batch
    assert count(sqlite_url, "spans") == before
    assert integrity(path) == "ok"


def test_locked_store_leaves_the_agent_running_and_catches_up(sqlite_url, caplog,
                                                              monkeypatch):
    monkeypatch.setenv("GEPA_TRACE_SQLITE_BUSY_MS", "100")
    forget_store(sqlite_url)
    before = seed(sqlite_url)
    path = sqlite_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    inst = gt.instrument(store=sqlite_url, service_name=AGENT)
    try:
        with caplog.at_level(logging.INFO, logger="gepa_trace.capture"):
            for i in range(3):
                run_agent(i)
            assert not inst.force_flush()
            assert inst.exporter.pending > 0
            assert any("locked" in w for w in warnings_of(caplog))
            assert count(sqlite_url, "spans") == before
            blocker.execute("ROLLBACK")
            assert inst.force_flush()
            assert any("accepts spans again" in r.getMessage() and r.levelno == logging.INFO
                       for r in caplog.records)
    finally:
        blocker.close()
        inst.shutdown()
    rows = span_rows(sqlite_url)
    assert len({r["trace_id"] for r in rows}) == 2 + 3
    assert len(rows) == before * 5 // 2
    assert integrity(path) == "ok"


class TcpCut:
    """A loopback TCP proxy in front of PostgreSQL that can drop every connection and
    refuse new ones (the network or the server going away), then let them through again."""

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.down = True
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.sockets.clear()

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.mark.postgres
def test_dropped_postgres_connection_leaves_the_agent_running_and_catches_up(pg_url, caplog):
    url = sa.engine.make_url(pg_url)
    proxy = TcpCut(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        before = seed(proxied)
        inst = gt.instrument(store=proxied, service_name=AGENT)
        try:
            with caplog.at_level(logging.WARNING, logger="gepa_trace.capture"):
                proxy.cut()
                for i in range(3):
                    run_agent(i)
                assert not inst.force_flush()
                assert inst.exporter.pending > 0
                assert warnings_of(caplog)
                assert count(pg_url, "spans") == before  # read directly, not via the proxy
                proxy.restore()
                assert inst.force_flush()
        finally:
            inst.shutdown()
        assert len({r["trace_id"] for r in span_rows(pg_url)}) == 2 + 3
    finally:
        forget_store(proxied)
        proxy.close()


def test_store_missing_at_startup_is_opened_once_it_exists(tmp_path, caplog):
    folder = tmp_path / "later"
    url = f"sqlite:///{folder / 'store.db'}"
    exporter = SqlSpanExporter(url)  # the directory does not exist yet
    with caplog.at_level(logging.WARNING, logger="gepa_trace.capture"):
        assert exporter.export(finished_spans(2)) is SpanExportResult.FAILURE
    assert warnings_of(caplog) and exporter.pending == 2
    Path(folder).mkdir()
    assert exporter.export(finished_spans(2)) is SpanExportResult.SUCCESS
    assert count(url, "spans") == 4
    forget_store(url)
