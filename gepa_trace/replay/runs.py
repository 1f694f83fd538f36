"""Reading optimization runs back for people: the list, and one run in detail."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from gepa_trace.errors import NotFoundError
from gepa_trace.optimizer.result import run_spend
from gepa_trace.store import CandidateRow, OptimizationRunRow, RunEventRow, Store, open_store

_RUNS = OptimizationRunRow.__table__
_CANDIDATES = CandidateRow.__table__
_EVENTS = RunEventRow.__table__


def _run_dict(row: Any) -> dict[str, Any]:
    """A run row for people. ``rollouts``: every phase's of the command (``run_spend``);
    ``status``: running, finished, stopped, or failed (rollouts kept failing)."""
    spent = run_spend(json.loads(row.totals or "{}"))
    return {"id": row.id, "agent": row.agent, "status": row.status,
            "started_at": row.started_at, "finished_at": row.finished_at,
            "best_candidate_id": row.best_candidate_id, "best_val_score": row.best_val_score,
            "stop_reason": row.stop_reason, "rollouts": spent["all"]["rollouts"],
            "warm_start_from": row.warm_start_from}


def list_runs(store: str | Store | None, *, agent: str | None = None,
              limit: int = 20) -> list[dict[str, Any]]:
    query = select(_RUNS).order_by(_RUNS.c.started_at.desc()).limit(limit)
    if agent:
        query = query.where(_RUNS.c.agent == agent)
    with open_store(store).read() as conn:
        return [_run_dict(r) for r in conn.execute(query)]


def describe_run(store: str | Store | None, run_id: str) -> dict[str, Any]:
    """A run with its best candidate, latest front per component, every diagnosis, its
    stored ``totals`` and ``spent`` (``run_spend``: by phase and in all)."""
    store = open_store(store)
    with store.read() as conn:
        row = conn.execute(select(_RUNS).where(_RUNS.c.id == run_id)).first()
        if row is None:
            raise NotFoundError(f"no optimization run {run_id!r} in the store "
                                "(list them with `gepa-trace runs`)")
        candidates = conn.execute(select(_CANDIDATES).where(_CANDIDATES.c.run_id == run_id)
                                  .order_by(_CANDIDATES.c.id)).all()
        fronts_rows = conn.execute(select(_EVENTS.c.payload).where(
            (_EVENTS.c.run_id == run_id) & (_EVENTS.c.kind == "front_changed"))
            .order_by(_EVENTS.c.seq)).all()
    fronts: dict[str, list[str]] = {}
    for (payload,) in fronts_rows:
        data = json.loads(payload)
        fronts[data["component"]] = list(data.get("versions") or data.get("front") or [])
    best = next((c for c in candidates if c.id == row.best_candidate_id), None)
    info = _run_dict(row)
    info["totals"] = json.loads(row.totals or "{}")
    info["spent"] = run_spend(info["totals"])  # what every printer of the run shows
    info["config"] = json.loads(row.config or "{}")
    info["best"] = None if best is None else {
        "id": best.id, "val_score": best.val_score, "prompts": json.loads(best.prompts)}
    info["fronts"] = fronts
    info["diagnoses"] = [{"id": c.id, "iteration": c.iteration, "component": c.component,
                          "origin": c.origin, "status": c.status, "val_score": c.val_score,
                          "parents": json.loads(c.parents), "diagnosis": c.diagnosis}
                         for c in candidates if c.origin != "seed"]
    return info
