"""Two `gepa-trace collect` processes writing into one PostgreSQL store (issue 19: the way
to scale ingest past one machine, behind an OpenTelemetry Collector's load-balancing
exporter): OTLP exporters send to both at once, a span that reaches both is stored once,
the totals add up, and neither collector fails a request (no unique violation, no
deadlock between their transactions).
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from collector_process import CollectorProcess

from gepa_trace.store import open_store

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

TRACES = 500  # 7 spans each: 3,500 spans
BATCH = 100


def _recorded_spans() -> list:
    """ReadableSpans of TRACES traces of a small agent, made by the OpenTelemetry SDK."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "trip-agent"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    for n in range(TRACES):
        with tracer.start_as_current_span("agent", attributes={
                "openinference.span.kind": "CHAIN", "input.value": f"question {n}"}):
            for step in ("plan", "search", "answer"):
                with tracer.start_as_current_span(step, attributes={
                        "openinference.span.kind": "LLM", "gepa.component": step,
                        "llm.model_name": "gepa-sim/task"}), \
                        tracer.start_as_current_span(f"{step}-tool",
                                                     attributes={"openinference.span.kind":
                                                                 "TOOL"}):
                    pass
    provider.shutdown()
    spans = list(memory.get_finished_spans())
    assert len(spans) == TRACES * 7  # the agent, and an LLM call and a tool per step
    return spans


def _send(port: int, spans: list, results: list, start: threading.Barrier) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=30)
    start.wait()
    for i in range(0, len(spans), BATCH):
        results.append(exporter.export(spans[i:i + BATCH]).name)
    exporter.shutdown()


def test_two_collectors_on_one_postgres_store_each_span_once(pg_url):
    open_store(pg_url)  # created by the fixture, as the first collector would
    spans = _recorded_spans()
    third = len(spans) // 3
    # A third goes to both collectors first, at the same moment and in the same order:
    # the two processes insert the same keys concurrently. Then each gets its own third.
    both = spans[third:2 * third]
    to_first, to_second = both + spans[:third], both + spans[2 * third:]
    collectors = [CollectorProcess(pg_url), CollectorProcess(pg_url)]
    results: list[list[str]] = [[], []]
    start = threading.Barrier(2)
    try:
        senders = [threading.Thread(target=_send, args=(c.http_port, part, out, start))
                   for c, part, out in zip(collectors, (to_first, to_second), results)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(120)
    finally:
        ends = [c.terminate() for c in collectors]
    for code, stderr in ends:
        assert code == 0, stderr
        for trouble in ("Traceback", "UniqueViolation", "deadlock", "failed"):
            assert trouble not in stderr, stderr
    assert results[0] == ["SUCCESS"] * -(-len(to_first) // BATCH)
    assert results[1] == ["SUCCESS"] * -(-len(to_second) // BATCH)
    store = open_store(pg_url)
    with store.read() as conn:
        stored = conn.execute(sa.text("SELECT trace_id, span_id FROM spans")).all()
    expected = {(format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"))
                for s in spans}
    assert len(stored) == len(set(stored)) == len(expected)
    assert set(stored) == expected
