"""What instrument() records for each kind of LangChain run, and how runs form trees."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import (
    FakeMessagesListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder, PromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from opentelemetry import trace as trace_api
from test_capture_agent import (
    ancestors,
    assert_well_formed,
    build_agent,
    by_trace,
    case,
    span_rows,
)

import gepa_trace as gt
from gepa_trace.collectors.langchain_values import template_from_serialized
from gepa_trace.prompts import messages_of_template, template_version

AGENT = "spans-agent"


@pytest.fixture
def instrumented(sqlite_url):
    inst = gt.instrument(store=sqlite_url, service_name=AGENT)
    yield inst
    inst.shutdown()


def stored(inst, url):
    assert inst.force_flush()
    return span_rows(url)


def test_instrument_twice_returns_the_same_handle_and_records_once(sqlite_url):
    first = gt.instrument(store=sqlite_url, service_name=AGENT)
    try:
        assert gt.instrument(store=sqlite_url, service_name=AGENT) is first
        model = GenericFakeChatModel(messages=iter(["one"]))
        model.invoke("hi")
        spans = stored(first, sqlite_url)
        assert [s["span_type"] for s in spans] == ["llm"]
    finally:
        first.shutdown()


def test_instrument_with_new_settings_replaces_the_old_one(sqlite_url, tmp_path):
    first = gt.instrument(store=sqlite_url, service_name=AGENT)
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    second = gt.instrument(store=other_url, service_name="other")
    try:
        assert second is not first and not first.active and second.active
        GenericFakeChatModel(messages=iter(["one"])).invoke("hi")
        spans = stored(second, other_url)
        assert [(s["span_type"], s["agent"]) for s in spans] == [("llm", "other")]
        assert span_rows(sqlite_url) == []
    finally:
        second.shutdown()
        from gepa_trace.store import forget_store

        forget_store(other_url)


def test_nothing_is_recorded_after_shutdown(sqlite_url):
    inst = gt.instrument(store=sqlite_url, service_name=AGENT)
    inst.shutdown()
    GenericFakeChatModel(messages=iter(["one"])).invoke("hi")
    assert span_rows(sqlite_url) == []


def test_tool_exception_is_an_error_span_and_propagates_unchanged(instrumented, sqlite_url):
    boom = ValueError("no such city: Atlantis")

    @tool
    def find(city: str) -> str:
        """Find a city."""
        raise boom

    chain = RunnableLambda(lambda x: find.invoke({"city": x}), name="lookup_step")
    with pytest.raises(ValueError) as caught:
        chain.invoke("Atlantis")
    assert caught.value is boom
    spans = stored(instrumented, sqlite_url)
    root = assert_well_formed(spans)
    (tool_span,) = [s for s in spans if s["span_type"] == "tool"]
    for span in (tool_span, root):
        assert span["status_code"] == "ERROR"
        assert "no such city: Atlantis" in span["status_message"]
        (event,) = span["events"]
        assert event["name"] == "exception"
        assert event["attributes"]["exception.type"] == "builtins.ValueError"
        assert "no such city" in event["attributes"]["exception.stacktrace"]


def test_agent_run_is_the_root_of_the_runs_inside_it(instrumented, sqlite_url):
    question, query, answer = case(1)
    with gt.agent_run(AGENT, inputs={"question": question}) as run:
        out = build_agent(query, answer).invoke({"question": question})
        run.set_outputs(out["answer"])
    assert len(run.trace_id) == 32
    spans = stored(instrumented, sqlite_url)
    assert {s["trace_id"] for s in spans} == {run.trace_id}
    root = assert_well_formed(spans)
    assert root["name"] == AGENT and root["span_type"] == "agent"
    assert root["attributes"]["output.value"] == answer
    graph = next(s for s in spans if s["name"] == "LangGraph")
    assert graph["parent_span_id"] == root["span_id"] and graph["span_type"] == "chain"


def test_agent_run_works_async_and_records_errors(instrumented, sqlite_url):
    async def main():
        async with gt.agent_run(AGENT, inputs="q"):
            model = GenericFakeChatModel(messages=iter(["a"]))
            await model.ainvoke("hi")
            raise KeyError("lost")

    with pytest.raises(KeyError):
        asyncio.run(main())
    spans = stored(instrumented, sqlite_url)
    root = assert_well_formed(spans)
    assert root["status_code"] == "ERROR" and root["events"][0]["name"] == "exception"
    assert [s["span_type"] for s in spans] == ["agent", "llm"]


def test_nested_agent_runs_share_one_trace(instrumented, sqlite_url):
    with gt.agent_run(AGENT) as outer, gt.agent_run("helper") as inner:
        GenericFakeChatModel(messages=iter(["a"])).invoke("hi")
    assert inner.trace_id == outer.trace_id
    spans = stored(instrumented, sqlite_url)
    assert_well_formed(spans)
    llm = next(s for s in spans if s["span_type"] == "llm")
    assert ancestors(llm, spans) == ["helper", AGENT]
    assert {s["agent"] for s in spans} == {AGENT}


def test_app_spans_inside_agent_run_join_its_trace(instrumented):
    from opentelemetry.sdk.trace import TracerProvider

    app_tracer = TracerProvider().get_tracer("app")
    with gt.agent_run(AGENT) as run, app_tracer.start_as_current_span("app work") as span:
        app_trace = format(span.get_span_context().trace_id, "032x")
    assert app_trace == run.trace_id
    # and our provider never became the global one
    assert trace_api.get_tracer_provider() is not instrumented.tracer_provider


def test_run_in_a_thread_with_its_config_keeps_its_parent(instrumented, sqlite_url):
    model = GenericFakeChatModel(messages=iter(["x", "y", "z"]))
    pool = ThreadPoolExecutor(2)

    def fan_out(text: str, config) -> list:
        futures = [pool.submit(model.invoke, f"{text}{i}", config) for i in range(3)]
        return [f.result().content for f in futures]

    outer = RunnableLambda(fan_out, name="fan_out")
    assert sorted(outer.invoke("q")) == ["x", "y", "z"]
    pool.shutdown()
    spans = stored(instrumented, sqlite_url)
    root = assert_well_formed(spans)
    assert root["name"] == "fan_out"
    llm = [s for s in spans if s["span_type"] == "llm"]
    assert len(llm) == 3 and all(s["parent_span_id"] == root["span_id"] for s in llm)


def test_concurrent_unrelated_runs_are_separate_traces(instrumented, sqlite_url):
    def one(i):
        return GenericFakeChatModel(messages=iter([f"r{i}"])).invoke(f"q{i}").content

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(8))) == [f"r{i}" for i in range(8)]
    traces = by_trace(stored(instrumented, sqlite_url))
    assert len(traces) == 8 and all(len(spans) == 1 for spans in traces.values())


def test_llm_span_carries_messages_tool_calls_model_and_tokens(instrumented, sqlite_url):
    reply = AIMessage("", tool_calls=[{"name": "lookup", "args": {"query": "peru"},
                                       "id": "call_1"}],
                      usage_metadata={"input_tokens": 11, "output_tokens": 3,
                                      "total_tokens": 14})
    model = FakeMessagesListChatModel(responses=[reply])
    history = [SystemMessage("be brief"), HumanMessage("capital of peru?"),
               AIMessage("", tool_calls=[{"name": "lookup", "args": {"query": "x"},
                                          "id": "call_0"}]),
               ToolMessage("unknown", tool_call_id="call_0")]
    model.invoke(history, stop=["END"])
    (span,) = stored(instrumented, sqlite_url)
    a = span["attributes"]
    assert [a[f"llm.input_messages.{i}.message.role"] for i in range(4)] == [
        "system", "user", "assistant", "tool"]
    assert a["llm.input_messages.1.message.content"] == "capital of peru?"
    assert a["llm.input_messages.2.message.tool_calls.0.tool_call.function.name"] == "lookup"
    assert a["llm.input_messages.3.message.tool_call_id"] == "call_0"
    assert a["llm.output_messages.0.message.tool_calls.0.tool_call.id"] == "call_1"
    assert json.loads(a["llm.output_messages.0.message.tool_calls.0.tool_call.function"
                        ".arguments"]) == {"query": "peru"}
    assert json.loads(a["llm.invocation_parameters"])["stop"] == ["END"]
    assert (a["llm.token_count.prompt"], a["llm.token_count.completion"],
            a["llm.token_count.total"]) == (11, 3, 14)
    assert span["input_tokens"] == 11 and span["output_tokens"] == 3


def test_component_identity_explicit_then_run_name_then_node_then_hash(instrumented,
                                                                     sqlite_url):
    from langgraph.graph import END, START, MessagesState, StateGraph

    plain = ChatPromptTemplate.from_messages([("system", "S {x}"), ("human", "{y}")])
    model = GenericFakeChatModel(messages=iter(["a"] * 10))
    (gt.component("explicit", plain).with_config(run_name="ignored") | model).invoke(
        {"x": 1, "y": 2})
    (plain.with_config(run_name="named") | model).invoke({"x": 1, "y": 2})
    (plain | model).invoke({"x": 1, "y": 2})

    def writer(state, config):
        return {"messages": [(plain | model).invoke({"x": 3, "y": 4}, config)]}

    graph = StateGraph(MessagesState)
    graph.add_node("writer", writer)
    graph.add_edge(START, "writer")
    graph.add_edge("writer", END)
    graph.compile().invoke({"messages": []})

    spans = stored(instrumented, sqlite_url)
    version = template_version(messages_of_template(plain))
    assert [s["component"] for s in spans if s["span_type"] == "llm"] == [
        "explicit", "named", f"prompt-{version}", "writer"]
    assert {s["prompt_version"] for s in spans if s["span_type"] == "llm"} == {version}
    # other tools read the component as the GenAI conventions' prompt name
    assert [s["attributes"]["gen_ai.prompt.name"] for s in spans
            if s["span_type"] == "llm"] == ["explicit", "named", f"prompt-{version}", "writer"]


def test_llm_input_that_extends_a_prompt_output_is_attributed_to_it(instrumented, sqlite_url):
    prompt = gt.component("chat", [("system", "You help."), ("human", "{q}")])
    model = GenericFakeChatModel(messages=iter(["a"]))

    def call(q, config):
        messages = prompt.invoke({"q": q}, config).to_messages()
        return model.invoke(messages + [HumanMessage("and more")], config)

    RunnableLambda(call, name="node").invoke("hello")
    spans = stored(instrumented, sqlite_url)
    llm = next(s for s in spans if s["span_type"] == "llm")
    assert llm["component"] == "chat"
    template = json.loads(llm["attributes"]["gepa.prompt.template"])
    assert template == messages_of_template(prompt)


def test_llm_without_a_matching_prompt_has_no_component(instrumented, sqlite_url):
    prompt = gt.component("chat", [("human", "{q}")])
    model = GenericFakeChatModel(messages=iter(["a"]))
    RunnableLambda(lambda q, config: (prompt.invoke({"q": q}, config),
                                      model.invoke("unrelated", config))[1].content,
                   name="node").invoke("hello")
    llm = next(s for s in stored(instrumented, sqlite_url) if s["span_type"] == "llm")
    assert "gepa.component" not in llm["attributes"]
    assert "gepa.prompt.version" not in llm["attributes"]
    # the join of sibling PROMPT spans is for foreign instrumentations, not ours
    assert llm["component"] is None and llm["prompt_version"] is None


def test_rollout_metadata_tags_every_span_of_the_trace(instrumented, sqlite_url):
    question, query, answer = case(2)
    tags = {"gepa.run.id": "run-7", "gepa.candidate.id": "3", "gepa.example.id": "ex-9"}
    build_agent(query, answer).invoke({"question": question}, {"metadata": tags})
    spans = stored(instrumented, sqlite_url)
    assert len(spans) > 5
    for span in spans:
        assert span["run_id"] == "run-7"
        assert {k: span["attributes"][k] for k in tags} == tags


def test_retriever_documents_are_recorded(instrumented, sqlite_url):
    class Shelf(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            return [Document("Lima is the capital of Peru.", id="d1",
                             metadata={"score": 0.9, "source": "atlas"})]

    Shelf().invoke("peru")
    (span,) = stored(instrumented, sqlite_url)
    a = span["attributes"]
    assert span["span_type"] == "retriever" and a["input.value"] == "peru"
    assert a["retrieval.documents.0.document.content"].startswith("Lima")
    assert a["retrieval.documents.0.document.id"] == "d1"
    assert a["retrieval.documents.0.document.score"] == 0.9


def test_a_failing_recorder_never_breaks_the_users_run(instrumented, sqlite_url, caplog):
    class Unprintable:
        def __str__(self):
            raise RuntimeError("cannot print me")

        __repr__ = __str__

    instrumented.recorder.raise_internal_errors = False
    model = GenericFakeChatModel(messages=iter(["a", "b"]))
    inner = RunnableLambda(lambda x, config: model.invoke("hi", config).content, name="inner")
    outer = RunnableLambda(lambda x, config: inner.invoke(Unprintable(), config), name="outer")
    with caplog.at_level("WARNING", logger="gepa_trace.capture"):
        assert outer.invoke("q") == "a"
        assert outer.invoke("q") == "b"
    warnings = [r for r in caplog.records if "could not record" in r.getMessage()]
    assert len(warnings) == 1  # once per distinct error, not once per run
    assert instrumented.recorder.internal_errors
    # the run we could not record does not cut its child off the trace
    traces = by_trace(stored(instrumented, sqlite_url))
    assert len(traces) == 2
    for spans in traces.values():
        root = assert_well_formed(spans)
        assert [s["name"] for s in spans] == ["outer", "GenericFakeChatModel"]
        assert spans[1]["parent_span_id"] == root["span_id"]


def test_template_read_from_serialized_prompt_matches_messages_of_template():
    templates = [
        ChatPromptTemplate.from_messages([("system", "S {a}"), MessagesPlaceholder("h"),
                                          ("human", "{q}"), ("ai", "ok"),
                                          SystemMessage("fixed")]),
        PromptTemplate.from_template("Tell me about {topic}"),
        ChatPromptTemplate.from_messages([("user", "{x}"), ("assistant", "y")]),
    ]
    for prompt in templates:
        assert template_from_serialized(prompt._serialized) == messages_of_template(prompt)


def test_a_streamed_call_is_one_llm_span_with_the_whole_output(instrumented, sqlite_url):
    prompt = gt.component("streamer", [("human", "{q}")])

    def chain():
        return prompt | GenericFakeChatModel(messages=iter(["red green blue"]))

    assert "".join(c.content for c in chain().stream({"q": "colours?"})) == "red green blue"

    async def collect():
        return "".join([c.content async for c in chain().astream({"q": "colours?"})])

    assert asyncio.run(collect()) == "red green blue"
    llm = [s for s in stored(instrumented, sqlite_url) if s["span_type"] == "llm"]
    assert len(llm) == 2
    for span in llm:
        assert span["attributes"]["output.value"] == "red green blue"
        assert span["component"] == "streamer"
