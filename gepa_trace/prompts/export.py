"""Exporting a run's best prompts for deployment, gated on a real held-out gain and on
review.

The gate reads the held-out test evaluations of the run's seed and best candidates
(stored by ``gepa_trace.optimize``), pairs them by example, and passes only when the
paired bootstrap's lower bound of the gain is above zero at the asked confidence.
Then the review (``prompts.review``): a best candidate whose changes are flagged is
exported only when a person approves them (``approve``, or an approval already
recorded for its versions); the approval is recorded as a run event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select

from gepa_trace.errors import ConfigError, GateRefused, NotFoundError
from gepa_trace.prompts.gate import GateResult, paired_bootstrap
from gepa_trace.prompts.promptset import PromptSet, PromptVersion
from gepa_trace.prompts.review import (
    Allow,
    Flag,
    RunReview,
    require_approval,
    review_run,
)
from gepa_trace.store import (
    CandidateRow,
    EvaluationRow,
    OptimizationRunRow,
    PromptVersionRow,
    Store,
)

_RUNS = OptimizationRunRow.__table__
_CANDIDATES = CandidateRow.__table__
_EVALS = EvaluationRow.__table__
_VERSIONS = PromptVersionRow.__table__


@dataclass
class ExportResult:
    run_id: str
    path: Path | None
    prompts: PromptSet
    gate: GateResult | None
    forced: bool
    review: RunReview | None = None
    approved: list[Flag] = field(default_factory=list)  # flagged changes a person approved

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "exported": str(self.path) if self.path else None,
                "versions": self.prompts.versions(), "forced": self.forced,
                "gate": self.gate.to_dict() if self.gate else None,
                "flags": [f.to_dict() for f in self.approved]}


def _candidate(conn, run_id: str, candidate_id: int) -> Any:
    row = conn.execute(select(_CANDIDATES).where(and_(
        _CANDIDATES.c.run_id == run_id, _CANDIDATES.c.id == candidate_id))).first()
    if row is None:
        raise NotFoundError(f"run {run_id!r} has no candidate {candidate_id}")
    return row


def _test_scores(conn, run_id: str, candidate_id: int) -> dict[str, float]:
    rows = conn.execute(select(_EVALS.c.example_id, _EVALS.c.score).where(and_(
        _EVALS.c.run_id == run_id, _EVALS.c.candidate_id == candidate_id,
        _EVALS.c.purpose == "test", _EVALS.c.error.is_(None))).order_by(_EVALS.c.id)).all()
    return {example_id: score for example_id, score in rows}


def held_out_gate(store: Store, run_id: str, *, confidence: float = 0.95,
                  seed: int = 0) -> GateResult | None:
    """The paired bootstrap of best vs seed on the run's held-out test evaluations,
    or None when the run has none."""
    with store.read() as conn:
        run = conn.execute(select(_RUNS).where(_RUNS.c.id == run_id)).first()
        if run is None:
            raise NotFoundError(f"no optimization run {run_id!r} in the store")
        seed_row = conn.execute(select(_CANDIDATES).where(and_(
            _CANDIDATES.c.run_id == run_id, _CANDIDATES.c.origin == "seed"))).first()
        if seed_row is None or run.best_candidate_id is None:
            return None
        seed_scores = _test_scores(conn, run_id, seed_row.id)
        best_scores = (seed_scores if run.best_candidate_id == seed_row.id
                       else _test_scores(conn, run_id, run.best_candidate_id))
    shared = sorted(set(seed_scores) & set(best_scores))
    if not shared:
        return None
    return paired_bootstrap([seed_scores[e] for e in shared], [best_scores[e] for e in shared],
                            confidence=confidence, seed=seed)


def run_prompts(store: Store, run_id: str, candidate_id: int | None = None) -> PromptSet:
    """The prompts of a run's candidate (default: its best), with provenance."""
    with store.read() as conn:
        run = conn.execute(select(_RUNS).where(_RUNS.c.id == run_id)).first()
        if run is None:
            raise NotFoundError(f"no optimization run {run_id!r} in the store "
                                "(list them with `gepa-trace runs`)")
        candidate_id = run.best_candidate_id if candidate_id is None else candidate_id
        if candidate_id is None:
            raise NotFoundError(f"run {run_id!r} has no scored candidate yet")
        cand = _candidate(conn, run_id, candidate_id)
        versions = json.loads(cand.prompts)
        rows = conn.execute(select(_VERSIONS).where(
            _VERSIONS.c.version.in_(list(versions.values())))).all()
    by_key = {(r.component, r.version): r for r in rows}
    out = {}
    for component, version in versions.items():
        row = by_key.get((component, version))
        if row is None:
            raise NotFoundError(f"run {run_id!r}: template of {component}@{version} is missing "
                                "from the store")
        scores = {"val": cand.val_score} if cand.val_score is not None else {}
        out[component] = PromptVersion(component, json.loads(row.template),
                                       parent_version=row.parent_version, run_id=run_id,
                                       scores=scores)
    return PromptSet(out, agent=run.agent)


def export_run(store: Store, run_id: str, out: str | Path, *, confidence: float = 0.95,
               force: bool = False, approve: bool = False,
               allow: Allow | None = None) -> ExportResult:
    """Write the best prompts of ``run_id`` to ``out`` (.json/.yaml) if the gate passes
    and no flagged change is left unapproved.

    Raises ``GateRefused`` (with the numbers) when the held-out gain is not significant
    or was never measured, unless ``force``; then ``ReviewRequired`` when the review
    flags the best candidate's changes, unless ``approve`` (``force`` does not approve).
    ``allow``: the review's allow-lists (default ``Allow.load()``).
    """
    path = Path(out)
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"--out {out}: use a .json, .yaml or .yml file name")
    prompts = run_prompts(store, run_id)
    gate = held_out_gate(store, run_id, confidence=confidence)
    if not force:
        if gate is None:
            raise GateRefused(f"run {run_id}: no held-out test evaluation to gate on; "
                              "export refused (use --force to export anyway)")
        if not gate.significant:
            raise GateRefused(f"run {run_id}: {gate.sentence()}: the lower bound is not above "
                              "zero, export refused (use --force to export anyway)")
    review = review_run(store, run_id, allow=allow)
    approved = require_approval(store, review, review.best_flags, prompts.versions(),
                                approve=approve, by="export")
    if gate is not None:
        prompts = PromptSet({name: PromptVersion(
            name, prompts.messages(name), parent_version=prompts.version_of(name).parent_version,
            run_id=run_id, scores={**prompts.version_of(name).scores,
                                   "test_seed": round(gate.seed_mean, 4),
                                   "test_best": round(gate.best_mean, 4)})
            for name in prompts}, agent=prompts.agent)
    prompts.save(path)
    return ExportResult(run_id=run_id, path=path, prompts=prompts, gate=gate, forced=force,
                        review=review, approved=approved)
