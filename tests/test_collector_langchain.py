"""Acceptance: a LangGraph app instrumented with openinference-instrumentation-langchain
exports with the stock OTLP exporters (proto-http to a `gepa-trace collect` subprocess,
proto-grpc to an in-process collector); every span is stored and `gepa-trace components`
shows the components with their templates."""

from __future__ import annotations

import json
from typing import TypedDict

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from collector_process import CollectorProcess

from gepa_trace.cli import main
from gepa_trace.collectors.otlp import Collector, CollectorConfig
from gepa_trace.store import forget_store, open_store

PLANNER = "You plan trips. Be brief."
SUMMARIZER = "Summarize the plan in one line."


def _build_app():
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.prompts import ChatPromptTemplate
    from langgraph.graph import END, START, StateGraph

    llm = FakeListChatModel(responses=["Lisbon in May.", "Go to Lisbon."])
    planner = ChatPromptTemplate.from_messages([("system", PLANNER), ("human", "{question}")])
    summarizer = ChatPromptTemplate.from_messages(
        [("system", SUMMARIZER), ("human", "{plan}")]).with_config(run_name="summarizer")
    plan_chain, summary_chain = planner | llm, summarizer | llm

    class State(TypedDict, total=False):
        question: str
        plan: str
        answer: str

    graph = StateGraph(State)
    graph.add_node("planner", lambda s: {"plan": plan_chain.invoke(
        {"question": s["question"]}).content})
    graph.add_node("writer", lambda s: {"answer": summary_chain.invoke(
        {"plan": s["plan"]}).content})
    graph.add_edge(START, "planner")
    graph.add_edge("planner", "writer")
    graph.add_edge("writer", END)
    return graph.compile()


def _span_ids(store) -> set[str]:
    with store.read() as conn:
        return {r[0] for r in conn.execute(sa.text("SELECT span_id FROM spans"))}


@pytest.mark.timeout(180)
def test_openinference_langgraph_app_exports_over_http_and_grpc_and_shows_components(
        tmp_path):
    from openinference.instrumentation.langchain import LangChainInstrumentor
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    http_url, grpc_url = (f"sqlite:///{tmp_path / 'http.db'}", f"sqlite:///{tmp_path / 'grpc.db'}")
    process = CollectorProcess(http_url, "--token", "t0k")
    grpc_store = open_store(grpc_url, create=True)  # as `gepa-trace collect` does
    in_process = Collector(grpc_store, CollectorConfig(http_port=None, grpc_port=0)).start()
    provider = TracerProvider(resource=Resource.create({"service.name": "trip-agent"}))
    sent = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(sent))
    provider.add_span_processor(BatchSpanProcessor(HttpExporter(
        endpoint=f"http://127.0.0.1:{process.http_port}/v1/traces",
        headers={"Authorization": "Bearer t0k"})))
    provider.add_span_processor(BatchSpanProcessor(GrpcExporter(
        endpoint=f"127.0.0.1:{in_process.grpc_port}", insecure=True)))
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        app = _build_app()
        for question in ("Where in spring?", "Where in May?", "Somewhere warm?"):
            app.invoke({"question": question})
        provider.force_flush(30)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
        in_process.stop()
    code, stderr = process.terminate()
    assert code == 0, stderr
    expected = {format(s.context.span_id, "016x") for s in sent.get_finished_spans()}
    assert len(expected) >= 3 * 6  # graph, 2 nodes, 2 chains, 2 prompts, 2 LLMs per run
    http_store = open_store(http_url)
    assert _span_ids(http_store) == expected
    assert _span_ids(grpc_store) == expected

    for url in (http_url, grpc_url):
        result = CliRunner().invoke(main, ["components", "--store", url, "--json"])
        assert result.exit_code == 0, result.output
        components = {c["name"]: c for c in json.loads(result.stdout)}
        assert set(components) == {"planner", "summarizer"}
        for name, text in (("planner", PLANNER), ("summarizer", SUMMARIZER)):
            assert components[name]["calls"] == 3
            (version,) = components[name]["versions"]
            assert version["template"] == [{"role": "system", "content": text}]
        forget_store(url)
