"""When the run stops: at safe points, on a limit, a request or a solved validation set.

Budget limits, patience, a stop file, SIGINT/SIGTERM and a lost run lock
(``optimizer.lock``) are checked between iterations and before each batch
(``_check_stop``); the run then returns a result. A validation set every candidate
solves grows instead of stopping the run, when ``grow_val`` allows (``_grow_val``).
"""

from __future__ import annotations

import os
import random

from gepa_trace.optimizer.events import (
    ValidationGrown,
)
from gepa_trace.optimizer.result import HistoryPoint
from gepa_trace.optimizer.stopping import StopRun


class Halting:
    """The run's stop checks (a part of ``Optimizer``)."""

    @property
    def lock_lost(self) -> str | None:
        """Why this run lost its agent's lock (another run took it over), or None;
        once set, the run stops at its next safe point with this reason."""
        return self._lock.lost if self._lock is not None else None

    def _check_stop(self, budget: bool = True) -> None:
        """Raise StopRun at a safe point if anything says the run should end. ``_idle``:
        iterations in a row that ran nothing new (every pair cached, every minibatch
        solved), which would otherwise loop forever on a budget in rollouts.
        ``budget=False`` between the iterations of a window, whose rollouts are spent:
        judging them costs nothing, and the window's validation was budgeted."""
        if self.lock_lost:  # "stopped", not "finished": it can be resumed
            raise StopRun(self.lock_lost, requested=True)
        if self._signals.received:
            raise StopRun(self._signals.received, requested=True)
        if self.config.stop_file and os.path.exists(self.config.stop_file):
            raise StopRun(f"stop file {self.config.stop_file} exists", requested=True)
        reason = self.budget.exhausted() if budget else None
        if reason:
            raise StopRun(reason)
        if self.config.patience is not None and self.state.pool:
            # since the best score was first reached (a tied descendant is no new best)
            best = self.state.candidates[self.state.first_best_ids()[0]]
            waited = self.state.iteration - 1 - best.iteration
            if waited >= self.config.patience:
                raise StopRun(f"patience: {waited} iterations without a new best")
        state = self.state
        while state.pool and state.mean_val(state.best_id()) >= self.config.perfect_score:
            if not (budget and self._grow_val()):
                raise StopRun("every validation example is solved")
        if self._idle >= self.config.max_idle_iterations:
            raise StopRun(f"{self._idle} iterations in a row found nothing to run "
                        "(every minibatch solved or every proposal already tried)")

    def _grow_val(self) -> bool:
        """Validation is solved: add as many examples to it as it started with
        (``grow_val``: the validation examples held back, then training examples),
        score the candidates that solved it on them, and keep only those in the pool.
        A training example a candidate already ran costs nothing. False (the run stops
        as solved) when growing is off, no example is left, or the budget cannot cover
        the new scores and one more iteration after them."""
        state = self.state
        if not self.config.grow_val:
            return False
        taken = set(state.val_ids)
        added = [i for i in self._reserve() if i not in taken][:self.val_start]
        if not added:
            return False
        perfect = self.config.perfect_score
        rescored = [state.candidates[cid] for cid in state.pool
                    if state.mean_val(cid) >= perfect]
        needed = sum(len(self.batches.missing(c, added)) for c in rescored)
        if self.batches.affordable(needed + 2 * self.config.minibatch_size
                                   + len(taken) + len(added)):
            return False
        solved_by = state.best_id()
        self.batches.collect(self.batches.submit([(c, added, "val") for c in rescored]))
        state.extend_val(added)
        for candidate in rescored:
            state.join_pool(candidate)
            self.recorder.save_candidate(candidate, new=False)
        best = state.best_id()
        score = state.mean_val(best)
        self.history.append(HistoryPoint(self.totals.rollouts, score, best, len(state.val_ids)))
        self.recorder.event("val_grown", {"added": added, "val_size": len(state.val_ids),
                                          "solved_by": solved_by, "kept": list(state.pool),
                                          "best": best, "score": score})
        self.callbacks.emit(ValidationGrown(state.iteration, len(added), len(state.val_ids),
                                            solved_by, best, score))
        self._update_fronts()
        self._checkpoint()
        return True

    def _reserve(self) -> list[str]:
        """Example ids in the order ``grow_val`` adds them: the validation examples the
        run did not start with, then the training examples (in an order fixed by the
        seed)."""
        train = [e.id for e in self.train]
        random.Random(f"gepa-trace:{self.config.seed}:grow-val").shuffle(train)
        return list(dict.fromkeys([e.id for e in self.val[self.val_start:]] + train))

    def _require(self, rollouts: int) -> None:
        """Stop now unless the budget covers ``rollouts`` more (no half candidates)."""
        reason = self.batches.affordable(rollouts)
        if reason:
            raise StopRun(reason)
