"""What a run counts and stores: totals per rollout, checkpoints and the result."""

from __future__ import annotations

import time

from gepa_trace.optimizer.config import val_is_optimistic
from gepa_trace.optimizer.events import (
    BudgetSpent,
    OptimizerErrorEvent,
)
from gepa_trace.optimizer.protocols import Rollout
from gepa_trace.optimizer.result import OptimizationResult, Totals
from gepa_trace.optimizer.state import Candidate


class Bookkeeping:
    """Totals, checkpoints and the result of a run (a part of ``Optimizer``)."""

    def _store_rollout(self, candidate: Candidate, example_id: str, purpose: str,
                       rollout: Rollout) -> None:
        self.recorder.save_evaluation(candidate.id, example_id, purpose, rollout)

    def _on_rollout(self, candidate: Candidate, example_id: str, purpose: str,
                    rollout: Rollout) -> None:
        totals = self.totals
        if rollout.recorded:  # read from a production run: no rollout was spent
            totals.recorded_rollouts += 1
            return
        totals.rollouts += 1
        totals.rollout_cache_hits += rollout.cache_hits
        totals.rollout_retries += rollout.attempts - 1  # failed attempts a retry healed
        self._charge(rollout)

    def _on_failed(self, candidate: Candidate, example_id: str, purpose: str,
                   rollout: Rollout) -> None:
        """A rollout still failing after its retries: counted and recorded as an error
        (never as an evaluation); what its attempts cost was spent all the same."""
        totals = self.totals
        totals.evaluator_errors += 1
        totals.rollout_retries += rollout.attempts - 1
        where = f"candidate {candidate.id} on example {example_id}"
        totals.first_error = totals.first_error or f"{where}: {rollout.error}"
        totals.failed_rollout_llm_calls += rollout.llm_calls
        self._charge(rollout)
        self.recorder.event("rollout_failed", {
            "candidate": candidate.id, "example": example_id, "purpose": purpose,
            "error": rollout.error, "attempts": rollout.attempts,
            "retryable": not rollout.permanent, "trace_id": rollout.trace_id,
            "llm_calls": rollout.llm_calls, "tokens": rollout.tokens,
            "cost_usd": rollout.cost_usd})
        self.callbacks.emit(OptimizerErrorEvent("evaluator", rollout.error,
                                                candidate_id=candidate.id,
                                                example_id=example_id))

    def _charge(self, rollout: Rollout) -> None:
        """Count a rollout's own LLM calls, tokens and dollars (failed attempts too)."""
        totals = self.totals
        roles = totals.llm_calls_by_role
        roles["task"] = roles.get("task", 0) + rollout.llm_calls
        totals.tokens += rollout.tokens
        totals.cost_usd += rollout.cost_usd

    def _on_cache_hit(self) -> None:
        self.totals.evaluation_cache_hits += 1

    def _best(self) -> tuple[int, float] | None:
        if not self.state.pool:
            return None
        best = self.state.best_id()
        return best, self.state.mean_val(best)

    def _snapshot(self) -> dict:
        spent = self.budget.spent()
        self.totals.wall_seconds = self._wall_offset + time.monotonic() - self._started
        self.totals.budget = {"rollouts": spent.rollouts, "llm_calls": spent.llm_calls,
                              "tokens": spent.tokens, "cost_usd": spent.cost_usd,
                              "seconds": spent.seconds,
                              "llm_calls_by_role": dict(spent.llm_calls_by_role),
                              "limits": self.budget.limits()}
        front_ids = sorted({m.candidate_id for c in self.components
                            for m in self._front(c).members}) if self.state.pool else []
        # the merges tried as of the start of the checkpoint's iteration (attempts that
        # found only duplicates leave no candidate to rebuild them from)
        memory = self._merge_memory
        triplets, results = ((memory[1], memory[2])
                             if memory is not None and memory[0] == self.state.iteration
                             else (sorted(self.tried_triplets), sorted(self.tried_results)))
        return {**self.totals.to_dict(),
                "history": [vars(p) for p in self.history],
                "front_candidates": front_ids,
                "val_added": self.state.val_ids[self.val_start:],
                "merges_tried": {"triplets": [list(t) for t in triplets],
                                 "results": list(results)}}

    def _checkpoint(self) -> None:
        if self._unjudged:
            self._settle()  # which checkpoints
            return
        snapshot = self._snapshot()
        budget = snapshot["budget"]
        self.callbacks.emit(BudgetSpent(budget["rollouts"], budget["llm_calls"],
                                        budget["tokens"], budget["cost_usd"],
                                        budget["seconds"], budget["limits"]))
        self.recorder.checkpoint(self.state.iteration, snapshot, self._best())

    def _result(self, reason: str) -> OptimizationResult:
        state = self.state
        best = state.best_id() if state.pool else 0
        return OptimizationResult(
            run_id=self.run_id, agent=self.agent,
            best_prompts=state.prompt_set(state.candidates[best], self.agent),
            best_candidate_id=best,
            best_val_score=state.mean_val(best) if state.pool else None,
            seed_val_score=self._seed_val_score(),
            fronts={c: self._front(c) for c in self.components} if state.pool else {},
            candidates=list(state.candidates), history=list(self.history),
            totals=Totals.from_dict(self.totals.to_dict()), stop_reason=reason,
            failed_with=self.failed_with,
            iterations=max(0, state.iteration - 1), val_size=len(state.val_ids),
            val_grown_by=len(state.val_ids) - self.val_start,
            val_optimistic=val_is_optimistic(self.config))

    def _seed_val_score(self) -> float | None:
        """The seed's mean on the validation examples the run started with (growing
        validation does not rerun it), or None before they are all scored."""
        state = self.state
        if not state.candidates:
            return None
        rollouts = [state.cached(state.candidates[0], e) for e in state.val_ids[:self.val_start]]
        if any(r is None for r in rollouts):
            return None
        return sum(r.score for r in rollouts) / len(rollouts)
