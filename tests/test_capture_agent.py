"""Issue 2, acceptance 1: a LangGraph agent with two prompt components and a tool, run 20
times (sync, threads, async, streaming) under ``instrument()``, lands in the store as
exactly one well-formed trace per run, and the CLI reads it back.

The agent and the store helpers here are imported by the other ``test_capture_*`` files.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypedDict
from uuid import uuid4

import pytest
import sqlalchemy as sa
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph

import gepa_trace as gt
from gepa_trace.prompts import messages_of_template, template_version
from gepa_trace.store import open_store

AGENT = "qa-agent"
FACTS = {"capital of france": "Paris", "capital of peru": "Lima", "capital of chad": "N'Djamena"}

PLANNER = gt.component("planner", ChatPromptTemplate.from_messages([
    ("system", "Turn the question into one lookup query. Reply with the query only."),
    ("human", "{question}"),
]))
ANSWERER = gt.component("answerer", ChatPromptTemplate.from_messages([
    ("system", "Answer the question from the observation, in one sentence."),
    ("human", "Question: {question}\nObservation: {observation}"),
]))


@tool
def lookup(query: str) -> str:
    """Look up a fact by its query."""
    return FACTS.get(query.strip().lower(), "unknown")


class State(TypedDict, total=False):
    question: str
    query: str
    observation: str
    answer: str


def usage(n_in: int, n_out: int) -> dict[str, int]:
    return {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out}


def build_agent(query: str, answer: str):
    """The agent for one run: a fresh fake model scripted with this run's two replies
    (a shared iterator would interleave between concurrent runs)."""
    model = GenericFakeChatModel(messages=iter([
        AIMessage(query, usage_metadata=usage(30, 4)),
        AIMessage(answer, usage_metadata=usage(50, 9)),
    ]))

    def plan(state: State, config) -> State:
        return {"query": (PLANNER | model).invoke({"question": state["question"]}, config).content}

    def act(state: State, config) -> State:
        return {"observation": lookup.invoke({"query": state["query"]}, config)}

    def respond(state: State, config) -> State:
        reply = (ANSWERER | model).invoke(
            {"question": state["question"], "observation": state["observation"]}, config)
        return {"answer": reply.content}

    graph = StateGraph(State)
    graph.add_node("plan", plan)
    graph.add_node("act", act)
    graph.add_node("respond", respond)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "act")
    graph.add_edge("act", "respond")
    graph.add_edge("respond", END)
    return graph.compile()


def case(i: int) -> tuple[str, str, str]:
    """(question, planner reply, expected answer) of run ``i``."""
    query = list(FACTS)[i % len(FACTS)]
    return f"What is the {query}? (#{i})", query, f"It is {FACTS[query]}."


# --- store helpers --------------------------------------------------------------------

def span_rows(url: str, where: str = "1=1", **params: Any) -> list[dict[str, Any]]:
    store = open_store(url)
    with store.read() as conn:
        result = conn.execute(sa.text(f"SELECT * FROM spans WHERE {where} ORDER BY start_ns"),
                              params)
        rows = [dict(r._mapping) for r in result]
    for row in rows:
        row["attributes"] = json.loads(row["attributes"])
        row["events"] = json.loads(row["events"])
    return rows


def count(url: str, table: str) -> int:
    with open_store(url).read() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def by_trace(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    traces: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        traces.setdefault(row["trace_id"], []).append(row)
    return traces


def assert_well_formed(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """One root, every other span's parent in the same trace; returns the root."""
    ids = {s["span_id"] for s in spans}
    roots = [s for s in spans if s["parent_span_id"] is None]
    assert len(roots) == 1, [s["name"] for s in roots]
    for s in spans:
        assert s["parent_span_id"] is None or s["parent_span_id"] in ids, s["name"]
    return roots[0]


def ancestors(span: dict[str, Any], spans: list[dict[str, Any]]) -> list[str]:
    index = {s["span_id"]: s for s in spans}
    names = []
    while span["parent_span_id"] is not None:
        span = index[span["parent_span_id"]]
        names.append(span["name"])
    return names


@pytest.fixture
def instrumented(store_url):
    inst = gt.instrument(store=store_url, service_name=AGENT)
    yield inst
    inst.shutdown()


# --- acceptance 1 ---------------------------------------------------------------------

def _run_sync(i: int, run_id=None) -> str:
    question, query, answer = case(i)
    config = {"run_id": run_id} if run_id else {}
    return build_agent(query, answer).invoke({"question": question}, config)["answer"]


def _run_stream(i: int) -> str:
    question, query, answer = case(i)
    final: dict[str, Any] = {}
    tokens = []
    for mode, chunk in build_agent(query, answer).stream({"question": question},
                                                         stream_mode=["messages", "values"]):
        if mode == "values":
            final = chunk
        else:
            tokens.append(chunk[0].content)
    assert tokens, "streaming produced no message chunks"
    return final["answer"]


async def _run_async(i: int) -> str:
    question, query, answer = case(i)
    return (await build_agent(query, answer).ainvoke({"question": question}))["answer"]


async def _run_astream(i: int) -> str:
    question, query, answer = case(i)
    final: dict[str, Any] = {}
    async for chunk in build_agent(query, answer).astream({"question": question},
                                                          stream_mode="values"):
        final = chunk
    return final["answer"]


def test_twenty_agent_runs_are_twenty_well_formed_traces(instrumented, store_url):
    from click.testing import CliRunner

    from gepa_trace.cli import main

    results: dict[int, str] = {}
    run_ids = {i: uuid4() for i in range(5)}
    for i in range(5):  # sync, with known run ids (their trace ids are asked for below)
        results[i] = _run_sync(i, run_ids[i])
    with ThreadPoolExecutor(4) as pool:  # threads
        for i, out in zip(range(5, 10), pool.map(_run_sync, range(5, 10))):
            results[i] = out
    for i in range(10, 13):  # sync streaming
        results[i] = _run_stream(i)

    async def concurrently():
        outs = await asyncio.gather(*[_run_async(i) for i in range(13, 17)],
                                    *[_run_astream(i) for i in range(17, 20)])
        return dict(zip(range(13, 20), outs))

    results.update(asyncio.run(concurrently()))
    assert results == {i: case(i)[2] for i in range(20)}  # the agent's own results
    assert instrumented.force_flush()

    traces = by_trace(span_rows(store_url))
    assert len(traces) == 20
    planner_v = template_version(messages_of_template(PLANNER))
    answerer_v = template_version(messages_of_template(ANSWERER))
    for spans in traces.values():
        root = assert_well_formed(spans)
        assert root["name"] == "LangGraph" and root["span_type"] == "agent"
        assert {s["agent"] for s in spans} == {AGENT}
        llm = [s for s in spans if s["span_type"] == "llm"]
        assert [(s["component"], s["prompt_version"]) for s in llm] == [
            ("planner", planner_v), ("answerer", answerer_v)]
        assert [ancestors(s, spans)[1] for s in llm] == ["plan", "respond"]
        prompts = [s for s in spans if s["span_type"] == "prompt"]
        assert [s["component"] for s in prompts] == ["planner", "answerer"]
        (tool_span,) = [s for s in spans if s["span_type"] == "tool"]
        assert tool_span["name"] == "lookup" and ancestors(tool_span, spans)[0] == "act"
        assert tool_span["attributes"]["output.value"] in FACTS.values()
        question = json.loads(root["attributes"]["input.value"])["question"]
        i = int(question.rsplit("#", 1)[1].rstrip(")"))
        assert json.loads(root["attributes"]["output.value"])["answer"] == case(i)[2]
        if not 10 <= i < 13:  # the fake model's streamed chunks carry no usage
            assert [(s["input_tokens"], s["output_tokens"]) for s in llm] == [(30, 4), (50, 9)]

    with open_store(store_url).read() as conn:
        versions = dict(conn.execute(sa.text(
            "SELECT component, version FROM prompt_versions")).all())
    assert versions == {"planner": planner_v, "answerer": answerer_v}

    # Feedback on some runs, found by the trace ids of their run ids.
    scored = {instrumented.trace_id_of(run_ids[i]): float(i % 2) for i in range(5)}
    assert None not in scored and len(scored) == 5
    for trace_id, score in scored.items():
        gt.record_feedback(trace_id, score=score, comment="checked", store=store_url)

    runner = CliRunner()
    out = runner.invoke(main, ["components", "--json", "--store", store_url])
    assert out.exit_code == 0, out.output
    components = {c["name"]: c for c in json.loads(out.stdout)}
    assert set(components) == {"planner", "answerer"}
    for name, version in (("planner", planner_v), ("answerer", answerer_v)):
        assert components[name]["calls"] == 20
        assert [v["version"] for v in components[name]["versions"]] == [version]
        assert components[name]["versions"][0]["calls"] == 20

    out = runner.invoke(main, ["traces", "--json", "--agent", AGENT, "--limit", "50",
                               "--store", store_url])
    assert out.exit_code == 0, out.output
    listed = {r["trace_id"]: r for r in json.loads(out.stdout)}
    assert set(listed) == set(traces)
    for trace_id, run in listed.items():
        if trace_id in scored:
            assert [f["score"] for f in run["feedback"]] == [scored[trace_id]]
        else:
            assert run["feedback"] == []
