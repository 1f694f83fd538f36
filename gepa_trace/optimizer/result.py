"""What a run returns: the best prompts, the fronts, the lineage, the history, the totals."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gepa_trace.optimizer.pareto import ComponentFront
from gepa_trace.optimizer.state import Candidate
from gepa_trace.prompts import PromptSet


@dataclass
class Totals:
    """Counters of a run (across resumes when a store is used).

    ``rollouts``: evaluator calls made; ``evaluation_cache_hits``: (prompts, example)
    pairs served from the run's evaluation cache instead; ``rollout_cache_hits``: LLM
    calls the evaluator served from its replay cache; ``llm_calls_by_role``: task calls
    (reported by rollouts) and reflection calls (made by the engine); ``superseded``:
    children proposed ahead (lookahead) of an accepted child, or on a wrong guess of
    the next parent, and so never judged, and ``superseded_rollouts`` the rollouts they
    ran: what lookahead cost; ``speculated``: iterations run while an accepted child was
    validated, on the guess that it would be their parent, ``speculated_adopted``: those
    whose guess held (their work counted, not wasted). ``evaluator_errors``: rollouts
    that still failed after their retries (never scores), ``rollout_retries``: attempts
    run again after a failure (healed or not), ``first_error``: the first failed
    rollout, as "candidate C on example E: error"; ``failed_rollout_llm_calls``: task
    calls those failed rollouts made (in ``llm_calls_by_role["task"]`` too).
    """

    rollouts: int = 0
    evaluation_cache_hits: int = 0
    rollout_cache_hits: int = 0
    llm_calls_by_role: dict[str, int] = field(default_factory=dict)
    reflection_errors: int = 0
    evaluator_errors: int = 0
    rollout_retries: int = 0
    first_error: str | None = None
    failed_rollout_llm_calls: int = 0
    superseded: int = 0
    superseded_rollouts: int = 0
    speculated: int = 0
    speculated_adopted: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    wall_seconds: float = 0.0
    budget: dict[str, Any] = field(default_factory=dict)

    @property
    def llm_calls(self) -> int:
        return sum(self.llm_calls_by_role.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Totals":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class HistoryPoint:
    """The best mean validation score known after ``rollouts`` rollouts, over
    ``val_size`` validation examples (validation grows once solved, see
    ``OptimizerConfig.grow_val``; 0 in runs recorded before it could)."""

    rollouts: int
    best_score: float
    candidate_id: int
    val_size: int = 0


@dataclass
class OptimizationResult:
    """What a run returns. ``failed_with``: None, or the failed rollout that stopped the
    run ("candidate 3 on example ab12: RuntimeError: task model down"); the run is then
    incomplete (resume it once the cause is fixed) and the CLI exits with code 7."""

    run_id: str
    agent: str
    best_prompts: PromptSet
    best_candidate_id: int
    best_val_score: float | None  # None: no candidate was validated (the run failed first)
    seed_val_score: float | None
    fronts: dict[str, ComponentFront]
    candidates: list[Candidate]
    history: list[HistoryPoint]
    totals: Totals
    stop_reason: str
    iterations: int
    val_size: int = 0
    val_grown_by: int = 0
    failed_with: str | None = None

    def lineage(self, candidate_id: int | None = None) -> list[Candidate]:
        """The candidate (default: the best) and its ancestors, nearest first."""
        start = self.best_candidate_id if candidate_id is None else candidate_id
        order, seen, queue = [], set(), [start]
        while queue:
            cid = queue.pop(0)
            if cid in seen:
                continue
            seen.add(cid)
            order.append(self.candidates[cid])
            queue.extend(self.candidates[cid].parents)
        return order

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (what ``--json`` prints)."""
        return {
            "run_id": self.run_id, "agent": self.agent, "stop_reason": self.stop_reason,
            "failed_with": self.failed_with,
            "errors": {"evaluator_errors": self.totals.evaluator_errors,
                       "rollout_retries": self.totals.rollout_retries,
                       "reflection_errors": self.totals.reflection_errors,
                       "first_error": self.totals.first_error},
            "iterations": self.iterations, "best_candidate_id": self.best_candidate_id,
            "best_val_score": self.best_val_score, "seed_val_score": self.seed_val_score,
            "val_size": self.val_size, "val_grown_by": self.val_grown_by,
            "best_prompts": self.best_prompts.versions(),
            "fronts": {c: [asdict(m) for m in f.members] for c, f in self.fronts.items()},
            "candidates": len(self.candidates),
            "totals": self.totals.to_dict(),
        }
