"""A small store for the UI's route tests: two runs of one agent with an LLM call and a
tool call each, one with hostile text in its input, messages and feedback."""

from __future__ import annotations

import json
import time

from starlette.testclient import TestClient

from gepa_trace.prompts.templates import template_version
from gepa_trace.store import open_store
from gepa_trace.store.feedback import record_feedback
from gepa_trace.store.spans import write_spans

AGENT = "ui-agent"
HOSTILE = "<script>alert('x')</script>"
TEMPLATE = [{"role": "system", "content": "Answer briefly. <b>Never</b> in bold."},
            {"role": "human", "content": "{question}"}]
VERSION = template_version(TEMPLATE)


def client(url: str, **settings) -> TestClient:
    """The UI's ASGI app on the store at ``url``, as a browser on this machine reaches it."""
    from gepa_trace.ui import UiSettings, create_app

    return TestClient(create_app(UiSettings(store=url, **settings)),
                      base_url="http://127.0.0.1")


def trace_id_of(n: int) -> str:
    return f"{n:08x}aa11bb22cc33dd44ee55ff66"


def run_spans(n: int, question: str, answer: str, *, status: str = "OK") -> list[dict]:
    t0 = int((time.time() - 3600 + n) * 1e9)
    ms = 1_000_000
    trace_id = trace_id_of(n)

    def span(k, parent, name, kind, start, end, **attrs):
        return {"trace_id": trace_id, "span_id": f"{n:08x}{k:08x}",
                "parent_span_id": f"{n:08x}{parent:08x}" if parent else None, "name": name,
                "kind": "INTERNAL", "start_ns": t0 + start * ms, "end_ns": t0 + end * ms,
                "status_code": status if k == 1 else "OK", "status_message": None,
                "attributes": {"openinference.span.kind": kind, **attrs}, "events": [],
                "resource": {"service.name": "svc"}}

    return [
        span(1, None, AGENT, "AGENT", 0, 900, **{
            "gepa.agent": AGENT, "input.value": json.dumps({"question": question}),
            "output.value": answer}),
        span(2, 1, "ChatModel", "LLM", 10, 500, **{
            "gepa.component": "answerer", "gepa.prompt.version": VERSION,
            "gepa.prompt.template": json.dumps(TEMPLATE), "llm.model_name": "gepa-sim/task",
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": "Answer briefly. <b>Never</b> in bold.",
            "llm.input_messages.1.message.role": "user",
            "llm.input_messages.1.message.content": question,
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": answer,
            "llm.token_count.prompt": 20, "llm.token_count.completion": 5}),
        span(3, 1, "search", "TOOL", 600, 800, **{
            "tool.name": "search", "input.value": question, "output.value": "a passage"}),
    ]


def build(url: str) -> dict[str, str]:
    """Write the two runs into a new store at ``url``; their trace ids by role."""
    store = open_store(url, create=True)
    write_spans(store, run_spans(1, "Capital of Peru?", "Lima"))
    write_spans(store, run_spans(2, f"Who wrote {HOSTILE}?", f"It was {HOSTILE}",
                                 status="ERROR"))
    record_feedback(trace_id_of(2), score=0.0, comment=f"bad {HOSTILE}", store=store)
    record_feedback(trace_id_of(1), score=1.0, store=store)
    return {"good": trace_id_of(1), "hostile": trace_id_of(2)}
