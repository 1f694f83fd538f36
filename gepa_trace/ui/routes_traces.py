"""Traces: the filtered list (``store.run_search``), one trace's span tree with each LLM
call's messages (``collectors.views.llm_view``), and the reviewer's feedback form
(``store.feedback.record_feedback``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gepa_trace.errors import ConfigError
from gepa_trace.ui.app import mutating, ui_of

PAGE_SIZE = 50


def _since(text: str | None) -> float | None:
    """'24h', '7d' or an ISO date, as the CLI's --since reads it."""
    import click

    from gepa_trace.cli.common import parse_since

    try:
        return parse_since(text or None)
    except click.BadParameter as exc:
        raise ConfigError(exc.message) from None


def traces_page(request: Request) -> Response:
    from gepa_trace.store.run_search import (
        FEEDBACK_FILTERS,
        RunFilter,
        agents_with_runs,
        search_runs,
    )

    ui, q = ui_of(request), request.query_params
    form = {key: q.get(key, "") for key in ("agent", "since", "until", "feedback", "version",
                                            "q")}
    form.update(corrected=q.get("corrected") == "1", errors=q.get("errors") == "1")
    filters = RunFilter(agent=form["agent"] or None, since=_since(form["since"]),
                        until=_since(form["until"]), feedback=form["feedback"] or None,
                        corrected=form["corrected"], errors=form["errors"],
                        version=form["version"].strip() or None,
                        text=form["q"].strip() or None)
    page = search_runs(ui.store, filters, after=q.get("after") or None, limit=PAGE_SIZE)
    return ui.page(request, "traces.html", runs=page.runs, next_cursor=page.next_cursor,
                   searched_to=page.searched_to,
                   form=form, agents=agents_with_runs(ui.store), feedback_filters=FEEDBACK_FILTERS,
                   first_page=not q.get("after"))


@dataclass(frozen=True)
class SpanView:
    """One span as the trace page shows it."""

    span: Any
    messages: list[dict[str, Any]]
    output_messages: list[dict[str, Any]]
    tool: str | None
    tool_input: str | None
    tool_output: str | None
    cost: float | None
    flagged: str | None


def _pretty(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def _span_view(span: Any, flagged: dict[str, str]) -> SpanView:
    from gepa_trace.collectors.views import llm_view

    attrs = span.attributes
    messages: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    if span.span_type == "llm":
        view = llm_view(attrs)
        messages, outputs = view.input_messages, view.output_messages
    cost = attrs.get("llm.cost.total")
    tool = attrs.get("tool.name") if span.span_type == "tool" else None
    return SpanView(span=span, messages=messages, output_messages=outputs,
                    tool=tool or (span.name if span.span_type == "tool" else None),
                    tool_input=_pretty(attrs.get("input.value")),
                    tool_output=_pretty(attrs.get("output.value")),
                    cost=cost if isinstance(cost, int | float) else None,
                    flagged=flagged.get(span.span_id))


def trace_page(request: Request) -> Response:
    from gepa_trace.store.queries import get_trace
    from gepa_trace.store.spans import flagged_spans

    ui = ui_of(request)
    trace = get_trace(ui.store, request.path_params["trace_id"])
    flagged = flagged_spans(ui.store, trace.trace_id)
    spans = [_span_view(s, flagged) for s in trace.spans]
    root = trace.root
    costs = [v.cost for v in spans if v.cost is not None]
    return ui.page(request, "trace.html", trace=trace, spans=spans, root=root,
                   root_input=_pretty(root.attributes.get("input.value")),
                   root_output=_pretty(root.attributes.get("output.value")),
                   cost=sum(costs) if costs else None,
                   saved=request.query_params.get("saved"))


def _number(text: str | None, what: str) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a number") from None


def add_feedback(request: Request, form: Any) -> Response:
    """Record the reviewer's feedback; back to the trace page, which shows it."""
    from gepa_trace.store.feedback import record_feedback

    ui = ui_of(request)
    trace_id = request.path_params["trace_id"]

    def text(key: str) -> str | None:
        value = (form.get(key) or "").strip()
        return value or None

    recorded = record_feedback(trace_id, score=_number(form.get("score"), "score"),
                               label=text("label"), comment=text("comment"),
                               expected=text("expected"), name=text("name") or "user",
                               source="reviewer", store=ui.store)
    return RedirectResponse(f"/traces/{recorded.trace_id}?saved={recorded.id}#feedback",
                            status_code=303)


def pages() -> list[Route]:
    return [Route("/traces", traces_page), Route("/traces/{trace_id}", trace_page)]


def actions() -> list[Route]:
    return [Route("/traces/{trace_id}/feedback", mutating(add_feedback), methods=["POST"])]
