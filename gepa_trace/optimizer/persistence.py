"""The run in the store: every candidate, evaluation, diagnosis, front change and budget
snapshot is committed as it happens, and read back to resume or warm-start.

``RunRecorder`` writes (each call is its own transaction); with no store it does
nothing, so the engine never asks whether it has one. ``load_run`` reads a run back.
``optimizer.lock.RunLock`` keeps two optimizations of one agent from running at once.

Writes happen on the run's main thread, except ``save_evaluation``, which rollout workers
call as each rollout completes (every call is its own transaction).

A write that finds the database busy or briefly unreachable (SQLAlchemy's
``OperationalError``: SQLite's "database is locked" past its busy timeout, a dropped
PostgreSQL connection) is tried again, ``WRITE_ATTEMPTS`` times in all with a growing
pause, since each write is one whole transaction. If it still fails, ``StoreError``
names the write and the cause; the engine turns a failed ``save_evaluation`` into a
failed rollout, so the run stops at the decision that needed it with the error, not a
traceback (``optimizer.failures``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from gepa_trace.errors import NotFoundError, StoreError
from gepa_trace.optimizer.protocols import ComponentRecord, Rollout
from gepa_trace.optimizer.state import Candidate
from gepa_trace.prompts import PromptVersion
from gepa_trace.store.engine import Store
from gepa_trace.store.tables import (
    CandidateRow,
    EvaluationRow,
    OptimizationRunRow,
    PromptVersionRow,
    RunEventRow,
)

_RUNS = OptimizationRunRow.__table__
_CANDIDATES = CandidateRow.__table__
_EVALS = EvaluationRow.__table__
_EVENTS = RunEventRow.__table__
_VERSIONS = PromptVersionRow.__table__


#: Tries of one write that finds the database busy, and the pause before the first retry
#: (doubled each time: 0.1 + 0.2 + 0.4 + 0.8 s, on top of SQLite's own busy timeout).
WRITE_ATTEMPTS = 5
WRITE_PAUSE_S = 0.1


def write_retrying(store: Store, what: str, write: Callable[[Any], None]) -> None:
    """``write(conn)`` in one transaction of ``store``, tried again while the database
    is busy (see the module docstring); StoreError naming ``what`` when it stays so."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            with store.write() as conn:
                write(conn)
            return
        except OperationalError as exc:
            if attempt == WRITE_ATTEMPTS:
                first = str(exc.orig if exc.orig is not None else exc).splitlines()[0]
                raise StoreError(f"cannot {what} after {attempt} tries: {first}") from exc
            time.sleep(WRITE_PAUSE_S * 2 ** (attempt - 1))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def rollout_to_row(rollout: Rollout) -> dict[str, Any]:
    records = {c: [{"inputs": r.inputs, "output": r.output, "error": r.error,
                    "extra": r.extra} for r in recs]
               for c, recs in rollout.records.items()}
    return {"score": float(rollout.score), "feedback": rollout.feedback,
            "output": _dumps(rollout.output), "records": _dumps(records),
            "trace_id": rollout.trace_id, "error": rollout.error,
            "llm_calls": rollout.llm_calls, "cache_hits": rollout.cache_hits,
            "tokens": rollout.tokens, "cost_usd": rollout.cost_usd}


def rollout_from_row(row: Any) -> Rollout:
    records = {c: [ComponentRecord(c, r["inputs"], r["output"], r.get("error"),
                                   r.get("extra") or {}) for r in recs]
               for c, recs in json.loads(row.records or "{}").items()}
    output = json.loads(row.output) if row.output else None
    return Rollout(score=row.score, feedback=row.feedback or "", output=output,
                   records=records, error=row.error, trace_id=row.trace_id,
                   llm_calls=row.llm_calls, cache_hits=row.cache_hits, tokens=row.tokens,
                   cost_usd=row.cost_usd)


def _candidate_row(run_id: str, c: Candidate) -> dict[str, Any]:
    return {"run_id": run_id, "id": c.id, "prompts": _dumps(c.prompts),
            "parents": _dumps(list(c.parents)), "origin": c.origin, "component": c.component,
            "diagnosis": c.diagnosis, "status": c.status, "reason": c.reason,
            "minibatch": _dumps(list(c.minibatch)),
            "minibatch_parent_sum": c.minibatch_parent_sum,
            "minibatch_child_sum": c.minibatch_child_sum, "val_score": c.val_score,
            "meta": _dumps(c.meta), "iteration": c.iteration}


def candidate_from_row(row: Any) -> Candidate:
    return Candidate(id=row.id, prompts=json.loads(row.prompts),
                     parents=tuple(json.loads(row.parents)), origin=row.origin,
                     component=row.component, iteration=row.iteration, status=row.status,
                     diagnosis=row.diagnosis, reason=row.reason,
                     minibatch=tuple(json.loads(row.minibatch or "[]")),
                     minibatch_parent_sum=row.minibatch_parent_sum,
                     minibatch_child_sum=row.minibatch_child_sum, val_score=row.val_score,
                     meta=json.loads(row.meta or "{}"))


class RunRecorder:
    """Writes one run. ``store=None`` makes every method a no-op."""

    def __init__(self, store: Store | None, run_id: str, agent: str):
        self.store = store
        self.run_id = run_id
        self.agent = agent
        self.seq = 0

    def create_run(self, config: Mapping[str, Any], seed: int,
                   warm_start_from: str | None) -> None:
        if self.store is None:
            return
        now = time.time()
        write_retrying(self.store, "create the run", lambda conn: conn.execute(
            _RUNS.insert().values(
                id=self.run_id, agent=self.agent, status="running", config=_dumps(config),
                seed=seed, iteration=0, started_at=now, heartbeat_at=now,
                warm_start_from=warm_start_from)))

    def reopen_run(self, last_seq: int) -> None:
        self.seq = last_seq
        if self.store is None:
            return
        now = time.time()
        write_retrying(self.store, "reopen the run", lambda conn: conn.execute(
            update(_RUNS).where(_RUNS.c.id == self.run_id).values(
                status="running", finished_at=None, stop_reason=None, heartbeat_at=now)))

    def save_versions(self, versions: list[PromptVersion], candidate_id: int) -> None:
        if self.store is None or not versions:
            return
        now = time.time()
        rows = [{"component": pv.component, "version": pv.version, "agent": self.agent,
                 "template": _dumps(pv.messages), "origin": "optimization",
                 "run_id": self.run_id, "candidate_id": candidate_id,
                 "parent_version": pv.parent_version, "first_seen": now, "last_seen": now}
                for pv in versions]
        write_retrying(self.store, "save prompt versions",
                       lambda conn: self.store.insert_ignoring_duplicates(conn, _VERSIONS, rows))

    def save_candidate(self, candidate: Candidate, new: bool) -> None:
        """Insert a new candidate, or update a stored one's status and scores."""
        if self.store is None:
            return
        row = _candidate_row(self.run_id, candidate)
        created = time.time()

        def write(conn: Any) -> None:
            if new:
                conn.execute(_CANDIDATES.insert().values(created_at=created, **row))
            else:
                conn.execute(update(_CANDIDATES).where(
                    (_CANDIDATES.c.run_id == self.run_id) & (_CANDIDATES.c.id == candidate.id)
                ).values(**row))

        write_retrying(self.store, f"save candidate {candidate.id}", write)

    def save_evaluation(self, candidate_id: int, example_id: str, purpose: str,
                        rollout: Rollout) -> None:
        if self.store is None:
            return
        row = {"run_id": self.run_id, "candidate_id": candidate_id, "example_id": example_id,
               "purpose": purpose, "created_at": time.time(), **rollout_to_row(rollout)}
        write_retrying(self.store, "save an evaluation",
                       lambda conn: conn.execute(_EVALS.insert().values(**row)))

    def event(self, kind: str, payload: Mapping[str, Any]) -> None:
        self.seq += 1
        if self.store is None:
            return
        row = {"run_id": self.run_id, "seq": self.seq, "kind": kind,
               "payload": _dumps(payload), "created_at": time.time()}
        write_retrying(self.store, f"record a {kind} event",
                       lambda conn: conn.execute(_EVENTS.insert().values(**row)))

    def checkpoint(self, iteration: int, totals: Mapping[str, Any],
                   best: tuple[int, float] | None) -> None:
        """The run's progress: next iteration, totals snapshot, best candidate, heartbeat."""
        if self.store is None:
            return
        values: dict[str, Any] = {"iteration": iteration, "totals": _dumps(totals),
                                  "heartbeat_at": time.time()}
        if best is not None:
            values["best_candidate_id"], values["best_val_score"] = best
        write_retrying(self.store, "checkpoint the run", lambda conn: conn.execute(
            update(_RUNS).where(_RUNS.c.id == self.run_id).values(**values)))

    def finish(self, status: str, stop_reason: str, iteration: int,
               totals: Mapping[str, Any], best: tuple[int, float] | None) -> None:
        if self.store is None:
            return
        self.checkpoint(iteration, totals, best)
        finished = time.time()
        write_retrying(self.store, "finish the run", lambda conn: conn.execute(
            update(_RUNS).where(_RUNS.c.id == self.run_id).values(
                status=status, stop_reason=stop_reason, finished_at=finished)))


@dataclass
class StoredRun:
    """A run as read back from the store."""

    row: OptimizationRunRow
    candidates: list[Candidate]
    versions: dict[tuple[str, str], PromptVersion]
    evaluations: list[tuple[int, str, Rollout]]  # (candidate id, example id, rollout)
    last_seq: int
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, Any]:
        return json.loads(self.row.totals or "{}")


def load_run(store: Store, run_id: str) -> StoredRun:
    """Everything stored of run ``run_id`` (NotFoundError if there is no such run)."""
    with store.session() as session:
        row = session.get(OptimizationRunRow, run_id)
        if row is None:
            raise NotFoundError(f"no optimization run {run_id!r} in the store")
        cand_rows = session.execute(select(CandidateRow).where(CandidateRow.run_id == run_id)
                                 .order_by(CandidateRow.id)).scalars().all()
        eval_rows = session.execute(select(EvaluationRow).where(EvaluationRow.run_id == run_id)
                                 .order_by(EvaluationRow.id)).scalars().all()
        last_seq = session.execute(select(RunEventRow.seq).where(RunEventRow.run_id == run_id)
                                .order_by(RunEventRow.seq.desc()).limit(1)).scalars().first()
        candidates = [candidate_from_row(r) for r in cand_rows]
        wanted = {(c, v) for cand in candidates for c, v in cand.prompts.items()}
        versions = {}
        for component in {c for c, _v in wanted}:
            for vrow in session.execute(select(PromptVersionRow)
                                     .where(PromptVersionRow.component == component)
                                     ).scalars().all():
                if (vrow.component, vrow.version) in wanted:
                    versions[(vrow.component, vrow.version)] = PromptVersion(
                        vrow.component, json.loads(vrow.template),
                        parent_version=vrow.parent_version, run_id=vrow.run_id)
    missing = wanted - set(versions)
    if missing:
        raise NotFoundError(f"run {run_id!r}: prompt versions {sorted(missing)} are not stored")
    evaluations = [(r.candidate_id, r.example_id, rollout_from_row(r)) for r in eval_rows]
    return StoredRun(row, candidates, versions, evaluations, last_seq or 0,
                     json.loads(row.config or "{}"))


def latest_run_id(store: Store, agent: str, exclude: str | None = None) -> str | None:
    """The most recently started run of ``agent`` that has a validated best candidate."""
    with store.session() as session:
        query = (select(OptimizationRunRow.id)
                 .where(OptimizationRunRow.agent == agent)
                 .where(OptimizationRunRow.best_candidate_id.is_not(None))
                 .order_by(OptimizationRunRow.started_at.desc()))
        for run_id in session.execute(query).scalars().all():
            if run_id != exclude:
                return run_id
    return None
