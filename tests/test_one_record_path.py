"""One in-process record path: the product's agent replay (recorded into a store) and the
demo / benchmark evaluator (recorded in memory) give the same records, the same metric
``trace`` argument and the same errors in feedback."""

import json

import pytest
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import StructuredTool

import gepa_trace as gt
from gepa_trace.demo import SEED_PROMPTS, build_agent, metric, questions
from gepa_trace.demo.evaluator import AgentEvaluator
from gepa_trace.optimizer.protocols import Example, RolloutContext, Score
from gepa_trace.prompts import PromptSet
from gepa_trace.replay.harness import AgentReplay, RolloutTrace, read_rollout
from gepa_trace.store.queries import get_trace

pytest.importorskip("langgraph")

CONTEXT = RolloutContext("run-1", 3, "val")


class Capturing:
    """A metric that keeps the ``trace`` arguments it was given."""

    def __init__(self, metric):
        self.metric, self.traces = metric, []

    def __call__(self, example, output, trace):
        self.traces.append(trace)
        return self.metric(example, output, trace)


def _records(records):
    return {c: [(r.component, r.inputs, r.output, r.error) for r in recs]
            for c, recs in records.items()}


def _shape(spans):
    """The spans without what differs between two runs of the same input: ids, clocks,
    and LangGraph's per-task checkpoint names in the metadata JSON."""
    index = {s["span_id"]: i for i, s in enumerate(spans)}
    shaped = []
    for s in spans:
        attributes = {k: v for k, v in s["attributes"].items() if k != "metadata"}
        shaped.append((s["name"], index.get(s["parent_span_id"]), s["status_code"],
                       s["status_message"], json.dumps(attributes, sort_keys=True)))
    return shaped


def _as_dicts(stored):
    """Stored spans (``get_trace``) as the span dicts ``read_rollout`` reads."""
    return [{"name": s.name, "span_id": s.span_id, "parent_span_id": s.parent_span_id,
             "start_ns": s.start_ns, "status_code": s.status,
             "status_message": s.status_message, "attributes": s.attributes}
            for s in stored]


def _product(sqlite_url, build, metric_fn, agent, prompts, example):
    """As `gepa-trace optimize` runs a rollout: agent replay into the run's store."""
    inst = gt.instrument(store=sqlite_url, service_name=agent)
    try:
        rollout = AgentReplay(build, metric_fn, agent=agent, instrumentation=inst).evaluate(
            prompts, example, CONTEXT)
        inst.force_flush()
    finally:
        inst.shutdown()
    return rollout


def test_the_demo_evaluator_and_the_products_replay_give_the_same_records_and_trace(
        sqlite_url):
    example = questions(1, seed=4)[0]
    product_metric, demo_metric = Capturing(metric), Capturing(metric)
    product = _product(sqlite_url, build_agent, product_metric, "demo-qa", SEED_PROMPTS,
                       example)
    # nothing is instrumented any more: the demo evaluator records in memory
    demo = AgentEvaluator(build_agent, demo_metric).evaluate(SEED_PROMPTS, example, CONTEXT)

    assert product.error is None and demo.error is None
    assert _records(demo.records) == _records(product.records)
    assert set(demo.records) == {"query_writer", "evidence_selector", "answerer"}
    assert demo.output == product.output
    assert (demo.score, demo.feedback) == (product.score, product.feedback)
    assert (demo.llm_calls, demo.tokens) == (product.llm_calls, product.tokens)

    (p_trace,), (d_trace,) = product_metric.traces, demo_metric.traces
    assert isinstance(p_trace, RolloutTrace) and isinstance(d_trace, RolloutTrace)
    assert (p_trace.trace_id, d_trace.trace_id) == (product.trace_id, demo.trace_id)
    assert _shape(d_trace.spans) == _shape(p_trace.spans)
    assert _records(d_trace.records) == _records(p_trace.records) == _records(demo.records)
    assert d_trace.errors == p_trace.errors == ()

    # the store holds the product's rollout, and reading it back gives the same records
    stored = get_trace(sqlite_url, product.trace_id).spans
    assert _records(read_rollout(_as_dicts(stored)).records) == _records(product.records)


def _lookup(query: str) -> str:
    """Looks a word up."""
    raise LookupError(f"no entry for {query}")


TOOL_PROMPTS = PromptSet({"answerer": [("system", "Answer briefly."), ("human", "{question}")]},
                         agent="tooly")


def _tool_agent(prompts):
    """Calls a failing tool, carries on without it, then answers with one LLM call."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    tool = StructuredTool.from_function(_lookup, name="lookup")
    answer = prompts["answerer"] | FakeListChatModel(responses=["Paris"] * 4)

    def run(inputs):
        try:
            tool.invoke({"query": inputs["question"]})
        except LookupError:
            pass
        return {"answer": answer.invoke(inputs).content}
    return RunnableLambda(run, name="tooly")


def _exact(example, output, trace):
    return Score(1.0 if output["answer"] == example.expected else 0.0, "checked the answer")


def test_a_failed_tool_call_in_a_finished_run_is_in_the_feedback_the_same_way_on_both_paths(
        sqlite_url):
    example = Example("t1", {"question": "capital of France?"}, expected="Paris")
    product_metric, demo_metric = Capturing(_exact), Capturing(_exact)
    product = _product(sqlite_url, _tool_agent, product_metric, "tooly", TOOL_PROMPTS,
                       example)
    demo = AgentEvaluator(_tool_agent, demo_metric, agent="tooly").evaluate(
        TOOL_PROMPTS, example, CONTEXT)

    assert product.error is None and demo.error is None and product.score == demo.score == 1.0
    assert product.feedback.startswith("checked the answer | errors in the trace: tool "
                                       "'lookup' failed")
    assert demo.feedback == product.feedback
    assert demo_metric.traces[0].errors == product_metric.traces[0].errors
    assert "tool 'lookup' failed" in demo_metric.traces[0].errors[0]
    assert _records(demo.records) == _records(product.records)
    assert demo.records["answerer"][0].extra["trace_errors"] == list(
        demo_metric.traces[0].errors)


def test_under_an_active_instrumentation_the_demo_evaluator_records_whole_traces_there(
        sqlite_url):
    example = questions(1, seed=6)[0]
    inst = gt.instrument(store=sqlite_url, service_name="demo-qa")
    try:
        rollout = AgentEvaluator(build_agent, metric).evaluate(SEED_PROMPTS, example, CONTEXT)
        inst.force_flush()
    finally:
        inst.shutdown()
    spans = get_trace(sqlite_url, rollout.trace_id).spans
    ids = {s.span_id for s in spans}
    assert [s.name for s in spans if s.parent_span_id is None] == ["demo-qa"]
    assert all(s.parent_span_id in ids for s in spans if s.parent_span_id is not None)
    assert all(s.attributes.get("gepa.run.id") == "run-1" for s in spans)
    assert _records(read_rollout(_as_dicts(spans)).records) == _records(rollout.records)
