"""What a run returns: the best prompts, the fronts, the lineage, the history, the totals.

A run's totals are stored as one JSON object (``optimization_runs.totals``): the loop's
``Totals`` fields, and, once the command that ran it has finished, a ``"command"`` block
with what each phase of the command spent (``command_spend``). Everything that prints a
run's numbers reads them through ``run_spend``, so the summary, ``--json``, ``runs
show``, the report and the demo print the same figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gepa_trace.optimizer.pareto import ComponentFront
from gepa_trace.optimizer.state import Candidate
from gepa_trace.prompts import PromptSet


@dataclass
class Totals:
    """Counters of a run (across resumes when a store is used).

    ``rollouts``: evaluator calls made; ``recorded_rollouts``: (prompts, example)
    pairs read from the example's recorded production run instead, which carried
    exactly those prompts (no rollout spent); ``evaluation_cache_hits``: (prompts, example)
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
    recorded_rollouts: int = 0
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
    def from_dict(cls, data: dict[str, Any]) -> Totals:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


#: The phases of an ``optimize`` command, in the order they run: one seed rollout and
#: one call to each model before the loop, the GEPA loop, the held-out test.
PHASES = ("preflight", "search", "held_out")


@dataclass
class PhaseSpend:
    """What one phase of a command spent.

    ``rollouts``: agent runs on one example (failed ones included); ``llm_calls_by_role``:
    calls that reached a model (task calls as the rollouts reported them; reflection and
    judge calls as the budget metered them), never the ones the replay cache answered,
    which are ``replay_cache_hits``; ``tokens`` and ``cost_usd``: of all those calls;
    ``errors``: rollouts that still failed after their retries.
    """

    rollouts: int = 0
    llm_calls_by_role: dict[str, int] = field(default_factory=dict)
    replay_cache_hits: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    errors: int = 0

    @property
    def llm_calls(self) -> int:
        return sum(self.llm_calls_by_role.values())

    def __add__(self, other: PhaseSpend) -> PhaseSpend:
        roles = dict(self.llm_calls_by_role)
        for role, n in other.llm_calls_by_role.items():
            roles[role] = roles.get(role, 0) + n
        return PhaseSpend(self.rollouts + other.rollouts, roles,
                          self.replay_cache_hits + other.replay_cache_hits,
                          self.tokens + other.tokens, self.cost_usd + other.cost_usd,
                          self.seconds + other.seconds, self.errors + other.errors)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["llm_calls_by_role"] = {r: n for r, n in sorted(self.llm_calls_by_role.items())
                                    if n}
        out["llm_calls"] = self.llm_calls
        out["cost_usd"] = round(self.cost_usd, 8)  # float sums differ in the 17th digit
        out["seconds"] = round(self.seconds, 3)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PhaseSpend:
        data = data or {}
        return cls(int(data.get("rollouts", 0)),
                   {r: int(n) for r, n in (data.get("llm_calls_by_role") or {}).items()},
                   int(data.get("replay_cache_hits", 0)), int(data.get("tokens", 0)),
                   float(data.get("cost_usd", 0.0)), float(data.get("seconds", 0.0)),
                   int(data.get("errors", 0)))

    @classmethod
    def from_budget(cls, spent: dict[str, Any] | None) -> PhaseSpend:
        """What a budget snapshot (``Totals.budget``, or ``Spent`` as a dict) metered."""
        spent = spent or {}
        return cls(0, {r: int(n) for r, n in (spent.get("llm_calls_by_role") or {}).items()},
                   0, int(spent.get("tokens", 0)), float(spent.get("cost_usd", 0.0)),
                   float(spent.get("seconds", 0.0)))

    def minus_budget(self, other: PhaseSpend) -> PhaseSpend:
        """This budget figure less ``other``'s calls, tokens and dollars (never below 0)."""
        roles = {r: max(0, n - other.llm_calls_by_role.get(r, 0))
                 for r, n in self.llm_calls_by_role.items()}
        return PhaseSpend(self.rollouts, roles, self.replay_cache_hits,
                          max(0, self.tokens - other.tokens),
                          max(0.0, self.cost_usd - other.cost_usd), self.seconds, self.errors)


def search_spend(totals: Totals, charged_before: PhaseSpend) -> PhaseSpend:
    """The loop's spend from its ``Totals``: rollouts, task calls, cache hits and errors
    as the rollouts reported them; reflection and judge calls, tokens and dollars from
    the budget's snapshot, less ``charged_before`` (what the preflight had charged to
    the same budget before the loop)."""
    metered = PhaseSpend.from_budget(totals.budget).minus_budget(charged_before)
    roles = dict(totals.llm_calls_by_role)
    for role, n in metered.llm_calls_by_role.items():
        if role != "task":  # the budget meters no agent calls but the preflight's probe
            roles[role] = n
    tokens, cost = ((metered.tokens, metered.cost_usd) if totals.budget
                    else (totals.tokens, totals.cost_usd))  # a callable-only run: no meter
    return PhaseSpend(totals.rollouts + totals.evaluator_errors, roles,
                      totals.rollout_cache_hits, tokens, cost, totals.wall_seconds,
                      totals.evaluator_errors)


def command_spend(phases: dict[str, PhaseSpend],
                  budget_before_search: PhaseSpend | None = None) -> dict[str, Any]:
    """The ``"command"`` block of a run's stored totals: each phase (``PHASES``) and
    ``all``, their sum. ``budget_before_search``: what the preflights of the run's commands
    charged to the budget, which a resumed command takes out of the budget's snapshot
    again (``search_spend``)."""
    total = PhaseSpend()
    for name in PHASES:
        total = total + phases.get(name, PhaseSpend())
    block: dict[str, Any] = {
        "phases": {name: phases.get(name, PhaseSpend()).to_dict() for name in PHASES},
        "all": total.to_dict(), "complete": True}
    if budget_before_search is not None:
        block["budget_before_search"] = budget_before_search.to_dict()
    return block


def run_spend(totals: dict[str, Any] | None) -> dict[str, Any]:
    """What a run spent, as stored ``totals`` (JSON) say: the ``"command"`` block when
    the command finished (``complete`` True), else, for runs still running and runs
    stored before the block existed, the loop's own figures as the one phase
    ``search`` (``complete`` False). Every printer of a run's numbers reads this."""
    totals = totals or {}
    block = totals.get("command")
    if block:
        return block
    budget = totals.get("budget") or {}
    search = PhaseSpend(
        int(totals.get("rollouts", 0)),
        dict(totals.get("llm_calls_by_role") or budget.get("llm_calls_by_role") or {}),
        int(totals.get("rollout_cache_hits", 0)),
        int(budget.get("tokens", totals.get("tokens", 0))),
        float(budget.get("cost_usd", totals.get("cost_usd", 0.0)) or 0.0),
        float(totals.get("wall_seconds", 0.0) or 0.0), int(totals.get("evaluator_errors", 0)))
    return {"phases": {"search": search.to_dict()}, "all": search.to_dict(),
            "complete": False}


def _phase_line(spend: dict[str, Any]) -> str:
    roles = ", ".join(f"{role} {n}" for role, n in sorted(spend["llm_calls_by_role"].items()))
    errors = f", {spend['errors']} failed" if spend.get("errors") else ""
    plural = "" if spend["rollouts"] == 1 else "s"
    return (f"{spend['rollouts']} rollout{plural}{errors}, {spend['llm_calls']} LLM calls"
            + (f" ({roles})" if roles else "") + f", {spend['replay_cache_hits']} "
            f"replay-cache hits, {spend['tokens']} tokens, ${spend['cost_usd']:.4f}, "
            f"{spend['seconds']:.0f}s")


def spend_lines(spent: dict[str, Any]) -> list[str]:
    """``run_spend``'s block as text: the whole command first, then each phase."""
    if not spent.get("complete"):
        return [(f"search only: {_phase_line(spent['all'])} (per-phase totals are stored "
                 "when the command finishes)")]
    return [f"all: {_phase_line(spent['all'])}"] + [
        f"  {name.replace('_', '-')}: {_phase_line(spent['phases'][name])}"
        for name in PHASES if name in spent["phases"]]


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
    val_optimistic: bool = False  # see optimizer.config.val_is_optimistic

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
            "val_optimistic": self.val_optimistic,
            "best_prompts": self.best_prompts.versions(),
            "fronts": {c: [asdict(m) for m in f.members] for c, f in self.fronts.items()},
            "candidates": len(self.candidates),
            "totals": self.totals.to_dict(),
        }
