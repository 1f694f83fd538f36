"""Issue 19, the agent side: a span the store cannot take is kept or counted, never lost
silently or reported exported; a store file deleted under the agent is recreated; a
store made read-only and writable again is written without a restart; feedback on a
locked store fails with our one-line error instead of a raw SQLAlchemy exception."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from readonly import set_read_only as _set_read_only
from test_capture_agent import count

import gepa_trace as gt
from gepa_trace.cli import main
from gepa_trace.collectors.exporter import CountingBatchSpanProcessor, SqlSpanExporter
from gepa_trace.errors import StoreError, StoreUnavailable
from gepa_trace.store import forget_store, open_store

AGENT = "durable-agent"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def make_spans(tracer, n: int) -> None:
    for i in range(n):
        with tracer.start_as_current_span("step", attributes={"gepa.agent": AGENT, "i": i}):
            pass


def capture_lines(caplog, level=logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "gepa_trace.capture" and r.levelno == level]


@pytest.fixture
def locked(sqlite_url, monkeypatch):
    """(url, lock, unlock): an exclusive lock on the store's file held by another
    connection, the way a second writer holds it."""
    monkeypatch.setenv("GEPA_TRACE_SQLITE_BUSY_MS", "300")
    forget_store(sqlite_url)  # the busy timeout is read when the engine is made
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0.1,
                              isolation_level=None)
    yield sqlite_url, lambda: blocker.execute("BEGIN EXCLUSIVE"), \
        lambda: blocker.execute("ROLLBACK")
    blocker.close()


def test_spans_made_while_the_store_is_locked_are_stored_or_counted_as_dropped(
        locked, caplog):
    url, lock, unlock = locked
    inst = gt.instrument(store=url, service_name=AGENT)
    inst.exporter.max_pending = 500  # the bound on kept spans, small to overflow it
    made = 3000
    try:
        with caplog.at_level(logging.INFO, logger="gepa_trace.capture"):
            lock()
            try:
                make_spans(inst.tracer, made)
                flushed_while_locked = inst.force_flush()
            finally:
                unlock()
            flushed_after = inst.force_flush()
    finally:
        inst.shutdown()
    dropped = inst.exporter.dropped
    assert count(url, "spans") + dropped == made
    assert dropped >= made - 500
    assert flushed_while_locked is False  # dropped and pending: never "all written"
    assert flushed_after is True  # the kept spans are written, nothing dropped since
    # thousands dropped, a handful of lines: one when failing starts, one on recovery
    warnings = capture_lines(caplog)
    assert 1 <= len(warnings) <= 3, warnings
    assert any("locked" in w for w in warnings)
    recovered = capture_lines(caplog, logging.INFO)
    assert len(recovered) == 1 and f"{dropped} spans dropped" in recovered[0]


class GatedExporter(SqlSpanExporter):
    """Blocks in export until the gate opens: a worker stuck on a slow store."""

    def __init__(self, url: str):
        super().__init__(url)
        self.gate = threading.Event()

    def export(self, spans, **kw):
        self.gate.wait(30)
        return super().export(spans, **kw)


def test_spans_the_full_batch_queue_refuses_are_counted_in_dropped(sqlite_url, caplog):
    exporter = GatedExporter(sqlite_url)
    provider = TracerProvider(resource=Resource.create({"service.name": AGENT}))
    provider.add_span_processor(CountingBatchSpanProcessor(
        exporter, max_queue_size=16, max_export_batch_size=4, schedule_delay_millis=10))
    made = 200
    try:
        with caplog.at_level(logging.WARNING):
            make_spans(provider.get_tracer("t"), made)
            exporter.gate.set()
            provider.force_flush()
            first_flush, second_flush = exporter.force_flush(), exporter.force_flush()
    finally:
        exporter.gate.set()
        provider.shutdown()
    dropped = exporter.dropped
    assert dropped >= made - 16 - 4  # the worker holds one batch, the queue 16
    assert count(sqlite_url, "spans") + dropped == made
    assert first_flush is False  # drops since the last flush
    assert second_flush is True
    # one line with the count, not one per span (the SDK's own "Queue full" per span)
    lines = [r.getMessage() for r in caplog.records if "dropp" in r.getMessage()]
    assert len(lines) == 1 and f"dropped {dropped} spans" in lines[0], lines


def test_a_deleted_store_file_is_recreated_and_later_spans_stored_in_it(sqlite_url, caplog):
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    inst = gt.instrument(store=sqlite_url, service_name=AGENT)
    try:
        make_spans(inst.tracer, 50)
        assert inst.force_flush()
        assert count(sqlite_url, "spans") == 50
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        with caplog.at_level(logging.WARNING, logger="gepa_trace.capture"):
            make_spans(inst.tracer, 30)
            assert inst.force_flush()
    finally:
        inst.shutdown()
    assert path.exists()
    assert count(sqlite_url, "spans") == 30  # in the recreated file, not the deleted one
    assert inst.exporter.exported == 80 and inst.exporter.dropped == 0
    assert any("deleted or replaced" in w for w in capture_lines(caplog))


def test_a_store_read_only_then_writable_again_is_written_without_restart(sqlite_url,
                                                                          caplog):
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    inst = gt.instrument(store=sqlite_url, service_name=AGENT)
    try:
        make_spans(inst.tracer, 20)
        assert inst.force_flush()
        _set_read_only(path, True)
        try:
            with caplog.at_level(logging.INFO, logger="gepa_trace.capture"):
                make_spans(inst.tracer, 40)
                assert inst.force_flush() is False
                assert inst.exporter.pending == 40
        finally:
            _set_read_only(path, False)
        with caplog.at_level(logging.INFO, logger="gepa_trace.capture"):
            make_spans(inst.tracer, 10)
            assert inst.force_flush()
    finally:
        inst.shutdown()
    assert count(sqlite_url, "spans") == 70
    assert inst.exporter.exported == 70 and inst.exporter.dropped == 0
    assert len(capture_lines(caplog)) == 1  # one warning for the whole episode
    assert any("40 spans kept meanwhile" in m for m in capture_lines(caplog, logging.INFO))


def test_feedback_on_a_locked_store_raises_store_unavailable(locked):
    url, lock, unlock = locked
    open_store(url)  # opened in this process: the write waits FEEDBACK_WAIT_MS
    lock()
    try:
        with pytest.raises(StoreUnavailable, match="locked by another writer") as err:
            gt.record_feedback(TRACE, score=1.0, store=url)
        assert isinstance(err.value, StoreError)
        forget_store(url)  # opened by this call: its migration check meets the lock
        with pytest.raises(StoreUnavailable, match="locked by another writer"):
            gt.record_feedback(TRACE, score=1.0, store=url)
        result = CliRunner().invoke(main, ["feedback", "add", TRACE, "--score", "1",
                                           "--store", url])
    finally:
        unlock()
    assert result.exit_code == StoreUnavailable.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "locked by another writer" in lines[0], result.output
    assert "Traceback" not in result.output and "sqlalchemy" not in result.output.lower()


def test_repeated_failures_are_one_warning_then_one_line_with_a_count(tmp_path, caplog,
                                                                       monkeypatch):
    from test_exporter_store import finished_spans

    import gepa_trace.collectors.exporter as exporter_module

    folder = tmp_path / "later"
    url = f"sqlite:///{folder / 'store.db'}"
    exporter = SqlSpanExporter(url)  # its directory does not exist yet: every write fails
    monkeypatch.setattr(exporter_module, "REPEAT_LOG_S", 3600.0)
    with caplog.at_level(logging.INFO, logger="gepa_trace.capture"):
        for _ in range(20):
            exporter.export(finished_spans(2))
        assert len(capture_lines(caplog)) == 1  # not one per failed batch
        monkeypatch.setattr(exporter_module, "REPEAT_LOG_S", 0.0)
        exporter.export(finished_spans(2))
        folder.mkdir()
        exporter.export(finished_spans(2))
    first, repeat = capture_lines(caplog)
    assert "could not write 2 spans" in first and "ConfigError" in first
    assert "20 more failed writes, 42 spans kept to retry" in repeat
    recovered = capture_lines(caplog, logging.INFO)
    assert len(recovered) == 1 and "after 21 failed writes" in recovered[0]
    assert "42 spans kept meanwhile are now written (44 in this write)" in recovered[0]
    assert count(url, "spans") == exporter.exported == 44
    forget_store(url)
