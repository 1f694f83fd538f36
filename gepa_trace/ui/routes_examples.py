"""Examples: what `gepa-trace examples` lists (``replay.dataset.load_examples`` with the
same arguments), and the marks a person sets on runs (``store.marks``)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gepa_trace.errors import ConfigError
from gepa_trace.ui.app import mutating, ui_of

SHOWN = 200  # rows per page of the examples table; the counts stay whole
SPLITS = ("train", "val", "test", "left-out")
ACTIONS = ("exclude", "golden", "include")


def examples_page(request: Request) -> Response:
    from gepa_trace.cli.examples import DEFAULT_MAX_USER_SHARE, trust_lines
    from gepa_trace.cli.examples import _row as example_row
    from gepa_trace.replay.dataset import REASONS, load_examples
    from gepa_trace.store.run_search import agents_with_runs

    ui, q = ui_of(request), request.query_params
    agents = agents_with_runs(ui.store)
    agent = q.get("agent") or (agents[0] if agents else "")
    only = q.get("split") or ""
    if only and only not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {only!r}")
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    reasons: list[tuple[str, int]] = []
    trust: list[str] = []
    if agent:
        # exactly what `gepa-trace examples --agent AGENT` reads (metric feedback)
        dataset = load_examples(ui.store, agent, min_examples=0, need_signal=True,
                                list_outside=True)
        rows = [example_row(e, split) for split in ("train", "val", "test")
                for e in getattr(dataset, split)]
        rows += [example_row(item.run, "left-out", item) for item in dataset.left_out]
        counts = {"train": len(dataset.train), "val": len(dataset.val),
                  "test": len(dataset.test), "left out": len(dataset.left_out)}
        reasons = [(REASONS[r], n) for r, n in sorted(dataset.left_out_by_reason().items(),
                                                     key=lambda kv: -kv[1]) if n]
        trust = trust_lines(dataset, DEFAULT_MAX_USER_SHARE)
    if only:
        rows = [r for r in rows if r["split"] == only]
    total = len(rows)
    return ui.page(request, "examples.html", agent=agent, agents=agents, rows=rows[:SHOWN],
                   total=total, shown=SHOWN, counts=counts, reasons=reasons, trust=trust,
                   only=only, splits=SPLITS, actions=ACTIONS)


def mark(request: Request, form: Any) -> Response:
    """Exclude a run, pin it to validation (golden), or remove its mark (include)."""
    from gepa_trace.store.marks import clear_mark, set_mark

    ui = ui_of(request)
    action, trace_id = form.get("action"), (form.get("trace_id") or "").strip()
    reason = (form.get("reason") or "").strip() or None
    if action not in ACTIONS:
        raise ConfigError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    if action == "include":
        clear_mark(ui.store, trace_id)
    else:
        set_mark(ui.store, [trace_id], "excluded" if action == "exclude" else "golden",
                 reason)
    back = form.get("back") or "/examples"
    if not back.startswith("/") or back.startswith("//"):  # never an open redirect
        back = "/examples"
    return RedirectResponse(back, status_code=303)


def pages() -> list[Route]:
    return [Route("/examples", examples_page)]


def actions() -> list[Route]:
    return [Route("/examples/mark", mutating(mark), methods=["POST"])]
