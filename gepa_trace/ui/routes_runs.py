"""Optimization runs: the list (``replay.runs.list_runs``), a run's page with the
report's header and sections (``report.html.report_parts``: one report design), and
the progress a running run's page polls (``/runs/{id}/progress.json``)."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gepa_trace.ui.app import ui_of


def runs_page(request: Request) -> Response:
    from gepa_trace.replay.runs import list_runs

    ui, q = ui_of(request), request.query_params
    agent = q.get("agent") or None
    return ui.page(request, "runs.html", runs=list_runs(ui.store, agent=agent, limit=200),
                   agent=agent or "")


def progress_of(store: Any, run_id: str) -> dict[str, Any]:
    """What a running run's page shows and refreshes: status, iterations, best score,
    budget spent and errors, as `runs show` reads them (``describe_run``)."""
    from gepa_trace.replay.runs import describe_run

    info = describe_run(store, run_id)
    spent, totals = info["spent"]["all"], info.get("totals") or {}
    return {"run_id": run_id, "status": info["status"], "stop_reason": info["stop_reason"],
            "iterations": max((d["iteration"] or 0 for d in info["diagnoses"]), default=0),
            "candidates": len(info["diagnoses"]), "best_val_score": info["best_val_score"],
            "rollouts": spent["rollouts"], "llm_calls": spent.get("llm_calls", 0),
            "cost_usd": spent.get("cost_usd", 0.0),
            "errors": int(totals.get("evaluator_errors") or spent.get("errors") or 0),
            "first_error": totals.get("first_error")}


def run_page(request: Request) -> Response:
    from gepa_trace.report.data import load_report_data
    from gepa_trace.report.html import report_parts

    ui = ui_of(request)
    run_id = request.path_params["run_id"]
    progress = progress_of(ui.store, run_id)  # NotFoundError (404) for an unknown run
    header, sections = report_parts(load_report_data(ui.store, run_id))
    # report_parts escapes every stored string it places (report.html), so it is markup
    return ui.page(request, "run.html", run_id=run_id, progress=progress,
                   header=Markup(header), sections=[Markup(s) for s in sections])


def progress_json(request: Request) -> Response:
    return JSONResponse(progress_of(ui_of(request).store, request.path_params["run_id"]))


def pages() -> list[Route]:
    return [Route("/runs", runs_page), Route("/runs/{run_id}", run_page),
            Route("/runs/{run_id}/progress.json", progress_json)]


def actions() -> list[Route]:
    return []
