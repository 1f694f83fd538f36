"""`components --agent` counts exactly the LLM calls of the agent's traces (issue 19: it
is read from two indexes now, revision 0008): checked against a count made in Python
from every stored span, on a store with the shapes that make a join go wrong."""

from __future__ import annotations

import time
from collections import defaultdict

import sqlalchemy as sa

from gepa_trace.store import open_store
from gepa_trace.store.components import list_components
from gepa_trace.store.spans import write_spans


def _span(trace: int, span: int, parent: int | None, start_ns: int, **attributes) -> dict:
    return {"trace_id": f"{trace:032x}", "span_id": f"{span:016x}",
            "parent_span_id": None if parent is None else f"{parent:016x}",
            "name": "s", "start_ns": start_ns, "end_ns": start_ns + 1000,
            "attributes": attributes}


def _llm(trace: int, span: int, parent: int | None, start_ns: int, component: str | None,
         version: str, **more) -> dict:
    extra = {"gepa.component": component} if component else {}
    return _span(trace, span, parent, start_ns, **{
        "openinference.span.kind": "LLM", "gepa.prompt.version": version,
        "llm.model_name": "m", **extra, **more})


def _store_of_awkward_traces(store) -> None:
    now = time.time_ns()
    spans = []
    for n in range(1, 61):
        agent, t0 = f"agent-{n % 3}", now - n * 10**9
        rollout = {"gepa.run.id": "run-1"} if n % 4 == 0 else {}
        spans.append(_span(n, n * 100, None, t0, **{"gepa.agent": agent, **rollout,
                                                     "openinference.span.kind": "CHAIN"}))
        # children without an agent of their own, and one naming another agent
        spans.append(_llm(n, n * 100 + 1, n * 100, t0 + 1, "planner", f"p{n % 2}"))
        spans.append(_llm(n, n * 100 + 2, n * 100, t0 + 2, "answer", f"a{n % 3}",
                          **({"gepa.agent": "agent-9"} if n % 5 == 0 else {})))
        spans.append(_llm(n, n * 100 + 3, n * 100, t0 + 3, None, "x"))  # no component
        spans.append(_span(n, n * 100 + 4, n * 100, t0 + 4, **{
            "openinference.span.kind": "TOOL", "gepa.component": "planner"}))  # not LLM
    # a trace with two roots of one agent: its calls count once
    spans += [_span(70, 7001, None, now, **{"gepa.agent": "agent-1"}),
              _span(70, 7002, None, now + 5, **{"gepa.agent": "agent-1"}),
              _llm(70, 7003, 7001, now + 1, "planner", "p9")]
    # calls whose root was never stored, though they name an agent themselves
    spans.append(_llm(80, 8001, 8000, now, "planner", "p0", **{"gepa.agent": "agent-1"}))
    write_spans(store, spans)


def _counted_in_python(store, agent: str) -> dict[tuple[str, str], tuple[int, float, float]]:
    with store.read() as conn:
        rows = conn.execute(sa.text(
            "SELECT trace_id, parent_span_id, agent, span_type, component, prompt_version, "
            "start_ns FROM spans")).all()
    traces = {r.trace_id for r in rows if r.parent_span_id is None and r.agent == agent}
    calls: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in rows:
        if r.trace_id in traces and r.span_type == "llm" and r.component is not None:
            calls[(r.component, r.prompt_version)].append(r.start_ns)
    return {key: (len(starts), min(starts) / 1e9, max(starts) / 1e9)
            for key, starts in calls.items()}


def test_components_of_an_agent_count_the_llm_calls_of_its_traces_only(store_url):
    store = open_store(store_url)
    _store_of_awkward_traces(store)
    for agent in ("agent-0", "agent-1", "agent-2", "agent-9"):
        listed = {(c.name, v.version): (v.calls, v.first_seen, v.last_seen)
                  for c in list_components(store, agent=agent) for v in c.versions
                  if v.calls}
        assert listed == _counted_in_python(store, agent), agent
    planner = next(c for c in list_components(store, agent="agent-1") if c.name == "planner")
    assert {v.version: v.calls for v in planner.versions}["p9"] == 1, \
        "a trace with two roots of the agent counts its calls once"
