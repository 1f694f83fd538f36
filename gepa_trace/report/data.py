"""What the report shows, read from the store: one ``ReportData`` per optimization run.

Everything here is derived from what the engine persists (the run row and its totals
JSON, candidates, evaluations, run events, prompt versions) and from spans tagged with
the run; nothing is recomputed from the agent. Reading never writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from gepa_trace.errors import NotFoundError
from gepa_trace.optimizer.pareto import pareto_front, version_scores
from gepa_trace.optimizer.provenance import Blame
from gepa_trace.optimizer.result import run_spend
from gepa_trace.optimizer.state import UNJUDGED
from gepa_trace.prompts.export import held_out_gate
from gepa_trace.prompts.gate import GateResult
from gepa_trace.prompts.review import RunReview, review_run
from gepa_trace.report.blame import best_blames
from gepa_trace.store.engine import Store
from gepa_trace.store.tables import (
    CandidateRow,
    EvaluationRow,
    OptimizationRunRow,
    PromptVersionRow,
    RunEventRow,
    SpanRow,
)

SIMULATED_PREFIX = "gepa-sim/"
# Evaluations of validation examples: the full validation pass, and a merge's
# subsample (which the evaluation cache then reuses for the validation pass).
_VAL_PURPOSES = ("val", "merge")


@dataclass(frozen=True)
class CandidateView:
    """One candidate with the numbers the report needs.

    ``scored_at``: the run's rollout count when its validation score was complete (the
    position of its last validation evaluation among all the run's evaluations).
    """

    id: int
    prompts: dict[str, str]
    parents: tuple[int, ...]
    origin: str
    component: str | None
    status: str
    iteration: int
    diagnosis: str | None
    reason: str | None
    minibatch_parent_sum: float | None
    minibatch_child_sum: float | None
    val_score: float | None
    scored_at: int | None


@dataclass(frozen=True)
class FrontPoint:
    """One version of a component in the pool: its mean validation score (per example,
    the best score of any pooled candidate using it), its length, its front status."""

    version: str
    mean: float
    chars: int
    on_front: bool
    candidate_ids: tuple[int, ...]


@dataclass(frozen=True)
class ComponentDiff:
    component: str
    seed_version: str
    best_version: str
    seed_text: str
    best_text: str


@dataclass(frozen=True)
class FailedProposal:
    """A reflection that produced no candidate (malformed reply, LLM error, ...)."""

    iteration: int | None
    parent: int | None
    kind: str
    reason: str


@dataclass
class ReportData:
    """What the report of one run shows. ``spent``: what the command spent, by phase
    and in all (``optimizer.result.run_spend``), the numbers the summary cards and the
    budget table print, the same as ``runs show`` and ``optimize`` print."""

    run: OptimizationRunRow
    config: dict[str, Any]
    totals: dict[str, Any]
    spent: dict[str, Any]
    candidates: list[CandidateView]
    best_id: int | None
    seed_id: int | None
    history: list[tuple[int, float, int]]  # (rollouts, best score, candidate id)
    rollouts: int
    fronts: dict[str, list[FrontPoint]]
    front_changes: dict[str, int]
    diffs: list[ComponentDiff]
    failed: list[FailedProposal]
    skipped: int
    models: list[str]
    gate: GateResult | None
    gate_note: str
    components: list[str] = field(default_factory=list)
    superseded: int = 0  # proposals made ahead (lookahead) and never judged: not listed
    growths: list[tuple[int, int]] = field(default_factory=list)  # (rollouts, val size)
    blames: list[Blame] = field(default_factory=list)  # the best candidate's, per component
    review: RunReview | None = None  # flagged changes (prompts.review), None: not read

    @property
    def simulated(self) -> bool:
        """True when any model of the run is the offline simulated provider."""
        return any(m.startswith(SIMULATED_PREFIX) for m in self.models)

    def candidate(self, candidate_id: int | None) -> CandidateView | None:
        for cand in self.candidates:
            if cand.id == candidate_id:
                return cand
        return None


def template_text(messages: list[dict[str, Any]]) -> str:
    """A template as readable text, one block per message (the same shape as
    ``gepa-trace prompts diff`` shows)."""
    parts = []
    for msg in messages:
        if msg.get("role") == "placeholder":
            parts.append(f"[{msg.get('variable', '')}: messages]")
        else:
            parts.append(f"[{msg.get('role', '')}]\n{msg.get('content', '')}")
    return "\n\n".join(parts) + "\n"


def _prompt_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(m.get("content") or "") for m in messages)


def _models_in(value: Any) -> list[str]:
    """Model-like strings anywhere in a config JSON (keys ending in lm/model)."""
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and key.endswith(("lm", "model")):
                out.append(item)
            else:
                out.extend(_models_in(item))
    elif isinstance(value, list):
        for item in value:
            out.extend(_models_in(item))
    return out


def load_report_data(store: Store, run_id: str, *, confidence: float = 0.95) -> ReportData:
    """Read everything the report of run ``run_id`` shows (``NotFoundError`` if the run
    is not in the store)."""
    with store.session() as session:
        run = session.get(OptimizationRunRow, run_id)
        if run is None:
            raise NotFoundError(f"no optimization run {run_id!r} in the store")
        session.expunge(run)
        cand_rows = session.execute(select(CandidateRow).where(CandidateRow.run_id == run_id)
                                    .order_by(CandidateRow.id)).scalars().all()
        eval_rows = session.execute(
            select(EvaluationRow.id, EvaluationRow.candidate_id, EvaluationRow.example_id,
                   EvaluationRow.purpose, EvaluationRow.score)
            .where(EvaluationRow.run_id == run_id).order_by(EvaluationRow.id)).all()
        event_rows = session.execute(
            select(RunEventRow.kind, RunEventRow.payload)
            .where(RunEventRow.run_id == run_id)
            .where(RunEventRow.kind.in_(("front_changed", "proposal_failed", "skipped")))
            .order_by(RunEventRow.seq)).all()
        span_models = session.execute(select(SpanRow.model).where(SpanRow.run_id == run_id)
                                      .where(SpanRow.model.is_not(None)).distinct()
                                      ).scalars().all()
        candidates_raw = [(r.id, json.loads(r.prompts), tuple(json.loads(r.parents)), r)
                          for r in cand_rows]
        wanted = {(c, v) for _i, prompts, _p, _r in candidates_raw for c, v in prompts.items()}
        templates: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for component in sorted({c for c, _v in wanted}):
            for vrow in session.execute(select(PromptVersionRow.version,
                                               PromptVersionRow.template)
                                        .where(PromptVersionRow.component == component)).all():
                if (component, vrow.version) in wanted:
                    templates[(component, vrow.version)] = json.loads(vrow.template)

    config = json.loads(run.config or "{}")
    totals = json.loads(run.totals or "{}")

    # Rollout position of each evaluation: evaluations are committed as they happen, so
    # their id order is the order the run spent its rollouts in.
    scored_at: dict[int, int] = {}
    val_scores: dict[int, dict[str, float]] = {}
    position = 0
    for row in eval_rows:
        if row.purpose == "test":  # held-out scoring is not part of the search budget
            continue
        position += 1
        if row.purpose in _VAL_PURPOSES:
            val_scores.setdefault(row.candidate_id, {})[row.example_id] = row.score
            scored_at[row.candidate_id] = position

    candidates = [CandidateView(
        id=cid, prompts=prompts, parents=parents, origin=r.origin, component=r.component,
        status=r.status, iteration=r.iteration, diagnosis=r.diagnosis, reason=r.reason,
        minibatch_parent_sum=r.minibatch_parent_sum,
        minibatch_child_sum=r.minibatch_child_sum, val_score=r.val_score,
        scored_at=scored_at.get(cid) if r.val_score is not None else None)
        for cid, prompts, parents, r in candidates_raw]
    seed = next((c for c in candidates if c.origin == "seed"), None)
    best_id = run.best_candidate_id
    if best_id is None:
        scored = [c for c in candidates if c.val_score is not None]
        best_id = max(scored, key=lambda c: (c.val_score, -c.id)).id if scored else None
    components = list(seed.prompts) if seed else sorted({c for c, _v in wanted})

    history = [(int(p["rollouts"]), float(p["best_score"]), int(p["candidate_id"]))
               for p in totals.get("history") or []]
    if not history:
        history = _history_from(candidates)
    growths, size = [], None
    for point in totals.get("history") or []:  # where validation grew (it was solved)
        if size and point.get("val_size", 0) > size:
            growths.append((int(point["rollouts"]), int(point["val_size"])))
        size = point.get("val_size") or size

    front_versions: dict[str, list[str]] = {}
    front_changes: dict[str, int] = {}
    failed: list[FailedProposal] = []
    skipped = 0
    superseded = sum(1 for c in candidates if c.status in UNJUDGED)
    for kind, payload_text in event_rows:
        payload = json.loads(payload_text or "{}")
        if kind == "front_changed":
            front_versions[payload["component"]] = list(payload.get("versions") or [])
            front_changes[payload["component"]] = front_changes.get(payload["component"], 0) + 1
        elif kind == "proposal_failed" and payload.get("ahead"):
            superseded += 1
        elif kind == "proposal_failed":
            failed.append(FailedProposal(payload.get("iteration"), payload.get("parent"),
                                         str(payload.get("kind", "")),
                                         str(payload.get("reason", ""))))
        else:
            skipped += 1

    pool = [c for c in candidates if c.val_score is not None and c.status == "accepted"]
    fronts = {component: _front_points(component, pool, val_scores, templates,
                                       front_versions.get(component))
              for component in components}

    diffs = []
    best = next((c for c in candidates if c.id == best_id), None)
    if seed is not None and best is not None:
        for component in components:
            sv, bv = seed.prompts.get(component), best.prompts.get(component)
            if sv is None or bv is None:
                continue
            diffs.append(ComponentDiff(
                component, sv, bv, template_text(templates.get((component, sv), [])),
                template_text(templates.get((component, bv), []))))

    # The same gate export applies, so the report and `gepa-trace export` agree.
    gate = held_out_gate(store, run_id, confidence=confidence)
    gate_note = "" if gate is not None else (
        "not measured: no held-out test evaluations of the seed and the best candidate")
    models = sorted(set(span_models) | set(_models_in(config)))
    return ReportData(run=run, config=config, totals=totals, spent=run_spend(totals),
                      candidates=candidates,
                      best_id=best_id, seed_id=seed.id if seed else None, history=history,
                      rollouts=position, fronts=fronts, front_changes=front_changes,
                      diffs=diffs, failed=failed, skipped=skipped, superseded=superseded,
                      models=models, growths=growths,
                      gate=gate, gate_note=gate_note, components=components,
                      blames=best_blames(store, run_id, best_id, components),
                      review=review_run(store, run_id))


def _history_from(candidates: list[CandidateView]) -> list[tuple[int, float, int]]:
    """Best-so-far steps from the candidates' validation scores, when the run's totals
    carry no history (runs written before the engine recorded one)."""
    out: list[tuple[int, float, int]] = []
    scored = sorted((c for c in candidates if c.scored_at is not None),
                    key=lambda c: (c.scored_at, c.id))
    for cand in scored:
        if not out or cand.val_score > out[-1][1]:
            out.append((cand.scored_at, cand.val_score, cand.id))
    return out


def _front_points(component: str, pool: list[CandidateView],
                  val_scores: dict[int, dict[str, float]],
                  templates: dict[tuple[str, str], list[dict[str, Any]]],
                  recorded_front: list[str] | None) -> list[FrontPoint]:
    """Every pooled version of ``component``; the front is the one the engine recorded
    last (its ``front_changed`` events), else recomputed with the engine's own rule."""
    example_ids = sorted({e for c in pool for e in val_scores.get(c.id, {})})
    scores = version_scores(component, [(c.prompts, val_scores.get(c.id, {})) for c in pool])
    front = set(recorded_front if recorded_front is not None
                else pareto_front(scores, example_ids))
    out = []
    for version, per_example in sorted(scores.items()):
        mean = (sum(per_example.get(e, 0.0) for e in example_ids) / len(example_ids)
                if example_ids else 0.0)
        users = tuple(c.id for c in pool if c.prompts.get(component) == version)
        out.append(FrontPoint(version, mean, _prompt_chars(templates.get((component, version),
                                                                          [])),
                              version in front, users))
    return out
