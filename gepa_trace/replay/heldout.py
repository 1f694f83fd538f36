"""The held-out test after the loop, and what the whole command spent.

The seed and the best candidate are both scored on the held-out test runs; the paired
bootstrap of that difference is what ``gepa-trace export`` gates on. A held-out rollout
that still fails after its retries leaves the test without a verdict
(``HeldOut.failed``), never a zero in the gate.

``save_run_totals`` then writes, once, what each phase of the command spent into the
run's stored totals (``optimizer.result.command_spend``): the one source every printer
of a run's numbers reads.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gepa_trace.errors import BudgetExhausted
from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer.protocols import Example, Rollout, RolloutContext
from gepa_trace.optimizer.result import OptimizationResult, PhaseSpend
from gepa_trace.optimizer.rollouts import run_with_retries, settle
from gepa_trace.prompts import PromptSet
from gepa_trace.prompts.gate import GateResult, paired_bootstrap
from gepa_trace.store import EvaluationRow, OptimizationRunRow, Store


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class HeldOut:
    """Seed and best scored on the held-out test runs, and the gate's verdict.

    ``failed``: why there is no verdict although there were test runs (a rollout still
    failing after its retries; the run stopped on errors); ``skipped``: why the test was
    not run to the end (the budget was spent). Either way ``gate`` is None and no
    scores are kept: an error is never counted as a score. ``spend``: what the held-out
    rollouts themselves spent, every attempt included, whether or not they were kept
    (the judge's metered calls are added by ``optimize``).
    """

    seed_scores: list[float]
    best_scores: list[float]
    gate: GateResult | None
    llm_calls: int = 0  # task-model calls the held-out rollouts sent
    failed: str | None = None
    skipped: str | None = None
    spend: PhaseSpend = field(default_factory=PhaseSpend)

    def to_dict(self) -> dict[str, Any]:
        return {"n": len(self.seed_scores),
                "seed_test_score": _mean(self.seed_scores),
                "best_test_score": _mean(self.best_scores),
                "gate": self.gate.to_dict() if self.gate else None,
                "failed": self.failed, "skipped": self.skipped}


#: A held-out rollout that errs is tried this many times in all before the held-out
#: test is reported as failed (transient errors pass; a broken agent does not).
HELD_OUT_ATTEMPTS = 3


def _held_out_rollout(evaluator: Any, prompts: PromptSet, example: Example,
                      context: RolloutContext, low: float, high: float,
                      spend: PhaseSpend, lock: threading.Lock,
                      budget: Budget | None = None) -> Rollout:
    """A scored rollout, or the failed one (``error`` set) after HELD_OUT_ATTEMPTS, by
    the loop's retry policy (``run_with_retries``). What every attempt cost is added to
    ``spend`` and settled on ``budget``: a retried attempt was paid for too.
    ``BudgetExhausted`` propagates: no budget is not the agent's error."""
    if budget is not None:  # the command's last spend (lm/budget.py)
        budget.start_rollout(counted=False)
    outcome = None
    try:
        outcome = run_with_retries(evaluator, prompts, example, context,
                                   HELD_OUT_ATTEMPTS - 1, (low, high))
    finally:
        if budget is not None:
            settle(budget, outcome)
    if not isinstance(outcome, Rollout):
        raise BudgetExhausted(outcome.reason)
    with lock:
        spend.llm_calls_by_role["task"] = (spend.llm_calls_by_role.get("task", 0)
                                           + outcome.llm_calls)
        spend.replay_cache_hits += outcome.cache_hits
        spend.tokens += outcome.tokens
        spend.cost_usd += outcome.cost_usd
    return outcome


def evaluate_held_out(evaluator: Any, result: OptimizationResult, seed_prompts: PromptSet,
                      test: list[Example], store: Store | None, workers: int,
                      seed: int = 0, score_range: tuple[float, float] = (0.0, 1.0),
                      budget: Budget | None = None) -> HeldOut:
    """Score the seed and the best candidate on ``test``; store each as purpose 'test'.

    With ``budget``, the test is the command's last spend: it starts only if all of
    its rollouts fit, each as costly as the costliest rollout so far (else it is
    ``skipped`` before anything is spent), and each attempt is charged as it ends.

    The metric contract is the loop's (``Score.checked`` within ``score_range``). A
    rollout with an error is retried (HELD_OUT_ATTEMPTS in all); if one still fails,
    the held-out test stops there and has no verdict (``HeldOut.failed`` says why) and
    nothing is stored for it. A spent budget ends it as ``skipped``. ``HeldOut.spend``
    counts every rollout run, kept or not.
    """
    if not test:
        return HeldOut([], [], None)
    seed_id = next(c.id for c in result.candidates if c.origin == "seed")
    needed = len(test) * (1 if result.best_candidate_id == seed_id else 2)
    short = budget.shortfall(needed) if budget is not None else None
    if short:
        return HeldOut([], [], None, skipped=f"not run for lack of budget: its {needed} "
                                             f"rollouts would pass it ({short})")
    started = time.monotonic()
    low, high = score_range
    seed_candidate = next(c for c in result.candidates if c.origin == "seed")
    jobs = [(seed_candidate.id, seed_prompts), (result.best_candidate_id, result.best_prompts)]
    scores: dict[int, list[float]] = {}
    rows = []
    spend, lock = PhaseSpend(), threading.Lock()
    stop = threading.Event()  # the first failure spares the rollouts not yet started

    def one(prompts: PromptSet, example: Example, context: RolloutContext) -> Any:
        if stop.is_set():
            return None
        try:
            rollout = _held_out_rollout(evaluator, prompts, example, context, low, high,
                                        spend, lock, budget)
        except BudgetExhausted as exc:
            stop.set()
            return exc
        if rollout.error:
            stop.set()
        return rollout

    def ended(**why: str | None) -> HeldOut:
        spend.seconds = time.monotonic() - started
        return HeldOut([], [], None, spend.llm_calls_by_role.get("task", 0), spend=spend,
                       **why)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for candidate_id, prompts in jobs:
            if candidate_id in scores:
                continue
            context = RolloutContext(result.run_id, candidate_id, "test", score_range)
            outcomes = list(pool.map(  # used up before the loop moves on
                lambda e, p=prompts, c=context: one(p, e, c), test))
            done = [o for o in outcomes if isinstance(o, Rollout)]
            spend.rollouts += len(done)
            spend.errors += sum(1 for r in done if r.error)
            spent = next((o for o in outcomes if isinstance(o, BudgetExhausted)), None)
            failed = next(((e, o) for e, o in zip(test, outcomes)
                           if isinstance(o, Rollout) and o.error), None)
            if failed is not None:
                example, rollout = failed
                return ended(failed=(f"candidate {candidate_id} on example {example.id} "
                                     f"failed {HELD_OUT_ATTEMPTS} times: {rollout.error}"))
            if spent is not None:
                return ended(skipped=f"the budget was spent ({spent})")
            scores[candidate_id] = [r.score for r in done]
            rows += [{"run_id": result.run_id, "candidate_id": candidate_id,
                      "example_id": e.id, "purpose": "test", "score": r.score,
                      "feedback": r.feedback, "trace_id": r.trace_id, "error": r.error,
                      "llm_calls": r.llm_calls, "cache_hits": r.cache_hits,
                      "tokens": r.tokens, "cost_usd": r.cost_usd, "created_at": time.time()}
                     for e, r in zip(test, done)]
    if store is not None:
        with store.write() as conn:
            conn.execute(EvaluationRow.__table__.insert(), rows)
    seed_scores = scores[seed_candidate.id]
    best_scores = scores[result.best_candidate_id]
    gate = paired_bootstrap(seed_scores, best_scores, seed=seed)
    spend.seconds = time.monotonic() - started
    return HeldOut(seed_scores, best_scores, gate, spend.llm_calls_by_role.get("task", 0),
                   spend=spend)


def stored_totals(store: Store, run_id: str) -> dict[str, Any]:
    """The run's stored totals JSON ({} when it has none yet)."""
    from sqlalchemy import select

    table = OptimizationRunRow.__table__
    with store.read() as conn:
        raw = conn.execute(select(table.c.totals).where(table.c.id == run_id)).scalar()
    return json.loads(raw or "{}")


def save_run_totals(store: Store, run_id: str, held_out: HeldOut, hits: dict[str, int],
                    command: dict[str, Any]) -> dict[str, Any]:
    """Add the held-out result, the replay-cache hits by component and the command's
    spend block (``command_spend``) to the run's stored totals, keeping the loop's
    fields for older readers; returns the totals as stored."""
    from sqlalchemy import select, update

    table = OptimizationRunRow.__table__
    with store.write() as conn:
        raw = conn.execute(select(table.c.totals).where(table.c.id == run_id)).scalar()
        totals = json.loads(raw or "{}")
        totals["held_out"] = held_out.to_dict()
        totals["replay_cache_hits_by_component"] = hits
        totals["command"] = command
        conn.execute(update(table).where(table.c.id == run_id)
                     .values(totals=json.dumps(totals)))
    return totals
