"""The example agent and its simulated world, used by ``gepa-trace demo``, the tests and
the benchmarks.

A multi-hop question-answering agent (LangGraph; components ``query_writer``,
``evidence_selector``, ``answerer``) over a generated knowledge base of companies, their
founders, cities and countries. Its default model is the simulated ``gepa-sim/task``;
numbers measured with it are simulated and labelled so.

    from gepa_trace.demo import build_agent, SEED_PROMPTS, metric, questions
    agent = build_agent(SEED_PROMPTS)
    out = agent.invoke({"question": questions(1, seed=0)[0].inputs["question"]})

Also here: ``gepa_trace.demo.evaluator.AgentEvaluator`` (agent replay, the optimizer's
in-process Evaluator, for an agent factory) and ``accuracy()``;
``gepa_trace.demo.traffic.run_traffic`` (traced production
runs with user feedback); ``python -m gepa_trace.demo accuracy`` (seed vs hand-written).
"""

from __future__ import annotations

from gepa_trace.demo.agent import (
    AGENT_NAME,
    BEST_PROMPTS,
    COMPONENTS,
    SEED_PROMPTS,
    build_agent,
    search_tool,
)
from gepa_trace.demo.metric import metric
from gepa_trace.demo.world import make_questions
from gepa_trace.optimizer.protocols import Example


def questions(n: int, seed: int = 0) -> list[Example]:
    """``n`` distinct demo questions as Examples: inputs ``{"question": ...}``, ``expected``
    the true answer, ``meta`` its kind and company. Deterministic per seed."""
    return [Example(id=f"demo-{seed}-{i}", inputs={"question": q.text}, expected=q.answer,
                    meta={"kind": q.kind, "company": q.company})
            for i, q in enumerate(make_questions(n, seed))]


__all__ = ["AGENT_NAME", "BEST_PROMPTS", "COMPONENTS", "SEED_PROMPTS", "build_agent",
           "metric", "questions", "search_tool"]
