"""Running ahead on a guess, and dropping what a wrong guess ran.

Two guesses, each read from what the run has judged so far (so the same at any
``workers`` and after a resume), and each made only while it has held as often as not:

- ``Guess.PARENT`` (``_speculate``): while an accepted child is scored on the
  validation set, the next iteration runs on the guess that this child will be its
  parent (the usual choice). If the plan made after validation picks it, its work is
  adopted (``_adopt``), else it is superseded (``_drop_spec``).
- ``Guess.REJECTED`` (``_run_ahead``): while a window is judged, the next window runs as
  far as its reflection calls on the guess that this window's children are all rejected
  (the state its plan reads is then unchanged).

Iterations run ahead start their reflection calls as their parents' minibatches come in
(``_start_ready_reflections``), without holding up the verdicts being judged. A wrong
guess costs only its rollouts and reflection calls; its children are recorded as
superseded, saying which guess failed and why.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future

from gepa_trace.optimizer.failures import RolloutFailed
from gepa_trace.optimizer.rollouts import BatchStopped
from gepa_trace.optimizer.slots import Guess, Slot
from gepa_trace.optimizer.state import UNJUDGED, Candidate
from gepa_trace.optimizer.stopping import StopRun


class Speculation:
    """The iterations run ahead on a guess (a part of ``Optimizer``)."""

    def _speculate(self, guess: Candidate, iteration: int) -> Slot | None:
        """Plan ``iteration`` as if ``guess`` (being validated) were picked as its
        parent, and start its parent minibatch. None when lookahead is off (GEPA's
        one-at-a-time loop), when minibatches or reflections take validation failures
        of their parent (the guess's are not known before its validation ends), or the
        budget cannot cover it as well as the validation (its minibatches and one more
        validation, as a planned iteration needs)."""
        if (self.config.lookahead < 2 or self.config.val_failures_in_minibatch
                or self.config.val_failures_in_reflection or not self._guess_holds(guess)):
            return None
        batch = self.sampler.batch(iteration - 1)
        remaining = self.budget.remaining_rollouts()
        needed = (len(self.batches.missing(guess, self.state.val_ids))
                  + len(self.batches.missing(guess, batch)) + len(batch)
                  + len(self.state.val_ids))
        if self.budget.exhausted() or (remaining is not None and needed > remaining):
            return None
        components = self.select_components(self.components, iteration)
        slot = self._slot_for(iteration, components, guess, batch, speculative=True)
        return slot if self._start_ahead(slot) else None

    def _run_ahead(self, iteration: int, width: int) -> None:
        """While a window (of ``width``) is judged, run the next window, from
        ``iteration``, as far as its reflection calls, planned on the guess that the
        window's children are all rejected (the state its plan reads is then
        unchanged). ``_plan_window`` adopts its slots, or they are superseded when a
        child is accepted: a wrong guess costs their parents' minibatches and their
        reflection calls. Only when the run's rejection rate makes that guess likelier
        than not; not when lookahead is off, when a merge would take that iteration, or
        when the budget cannot also cover the children's minibatches and one
        validation."""
        if (self.config.lookahead < 2 or self._ahead or self._merge_due(iteration)
                or self._rejection_rate() ** width < 0.5):
            return
        remaining = self.budget.remaining_rollouts()
        needed = len(self.state.val_ids)
        for it in range(iteration, iteration + self._window_width(iteration)):
            components, parent, batch = self._pick(it, self._rng(it))
            needed += len(self.batches.missing(parent, batch)) + len(batch)
            if self.budget.exhausted() or (remaining is not None and needed > remaining):
                return
            slot = self._slot_for(it, components, parent, batch, speculative=True)
            slot.guess = Guess.REJECTED
            if not self._start_ahead(slot):
                return
            self._ahead.append(slot)
        # their reflections too, each as soon as its parent's minibatch is in, while
        # this window's children are judged (``_verdict`` wakes up for them); their
        # calls are wasted, like the minibatches, if a child is accepted
        self._start_ready_reflections()

    def _start_ahead(self, slot: Slot) -> bool:
        """Announce a slot run on a guess and start its minibatches (False: the budget
        refused them)."""
        self._announce(slot, ahead=True)
        self.totals.speculated += 1
        try:
            self._submit_slot(slot)
        except BatchStopped:
            return False
        return True

    def _start_ready_reflections(self) -> list[Future]:
        """Start the reflection calls of the iterations run ahead (or being dropped)
        whose parents' minibatches are in, reading the rollouts without recording them
        (``_reflect_slot`` records them where a run at any ``workers`` does); return
        the rollouts still running for the others, to wake up on. The calls and their
        prompts are the same whenever they start."""
        running: list[Future] = []
        for slot in [slot for slot, _why in self._dropping] + self._ahead:
            if slot.started or slot.parent_batch is None:
                continue
            rollouts = self.batches.peek(slot.parent_batch)
            if rollouts is None:
                running.extend(self.batches.running(slot.parent_batch))
            else:
                self._begin_reflection(slot, rollouts[0])
        return running

    def _rejection_rate(self) -> float:
        """The share of this run's judged reflection children that were rejected
        (0 before any): how likely a window's children are all rejected. Read from the
        judged candidates, so it is the same at any ``workers`` and after a resume."""
        judged = [c.status for c in self.state.candidates
                  if c.origin == "reflection" and c.status in ("accepted", "rejected")]
        return judged.count("rejected") / len(judged) if judged else 0.0

    def _guess_holds(self, guess: Candidate) -> bool:
        """Whether guessing that a validated candidate is the next iteration's parent
        has held at least as often as not so far in this run (so also before there is
        any evidence: GEPA's selection usually picks the newest candidate).
        Read from the judged candidates, so it is the same at any ``workers`` and
        after a resume: where Pareto selection or merges often pick otherwise, the
        run stops spending rollouts on the guess."""
        if guess.iteration == 0:
            return True
        first: dict[int, Candidate] = {}
        for c in self.state.candidates:
            if c.status not in UNJUDGED and c.origin in ("reflection", "merge"):
                first.setdefault(c.iteration, c)
        right = wrong = 0
        for cid in self.state.pool:
            c = self.state.candidates[cid]
            after = first.get(c.iteration + 1) if c.iteration > 0 else None
            if after is not None:
                if after.origin == "reflection" and after.parents == (c.id,):
                    right += 1
                else:
                    wrong += 1
        return right >= wrong

    def _advance_spec(self, slot: Slot) -> Slot | None:
        """Take a guessed iteration as far as it goes without judging it: parent's
        minibatch, reflection, child and its minibatch started. None if the budget
        ran out on the way (the iteration is then planned normally, if at all)."""
        try:
            self._reflect_slot(slot)
            self._propose_slot(slot)
        except (StopRun, BatchStopped):
            self._ahead = [slot]
            self._drop_spec("the budget ran out while it was proposed")
            return None
        except RolloutFailed:
            # its parent's minibatch failed: no decision needs it unless the guess holds
            # (then ``_plan_window`` adopts the slot and its collect stops the run)
            return slot
        return slot

    def _adopt(self, slot: Slot, ahead: bool) -> None:
        """A planned iteration; if it was run on a guess (now known right), or found a
        child proposed that way by an earlier process, that child becomes its own."""
        if slot.speculative:
            self.totals.speculated_adopted += 1
        slot.guess = Guess.NONE
        self._announce(slot, ahead=ahead)
        if slot.child is not None and slot.child.status == "speculative":
            slot.child.status = "proposed"
            self.recorder.save_candidate(slot.child, new=False)

    def _set_aside(self, why: str = "its guessed parent was not picked") -> None:
        """Drop the iterations run on a guess that did not hold without waiting for
        them: their reflections still start as their parents' minibatches come in, and
        the next ``_drop_spec`` records them as it would have now."""
        self._dropping.extend((slot, why) for slot in self._ahead)
        self._ahead = []

    def _drop_spec(self, why: str = "its guessed parent was not picked") -> None:
        """Supersede the iterations run on a guess that did not hold (and those set
        aside before): each one's reflection is started if it was not yet and its
        replies are read (a diagnosis is kept, a malformed reply or LM error
        recorded), so what is recorded does not depend on when."""
        dropping, self._dropping = self._dropping, []
        ahead, self._ahead = self._ahead, []
        for slot, reason in dropping + [(slot, why) for slot in ahead]:
            if not slot.recorded and slot.parent_batch is not None:
                with contextlib.suppress(BatchStopped, RolloutFailed):  # decides nothing
                    self._reflect_slot(slot)
            if slot.calls and slot.child is None and slot.failure is None:
                with contextlib.suppress(StopRun):
                    slot.child = self._proposal(slot)
            self._record_ahead_failures([slot])
            batches = [b for b in (slot.parent_batch, slot.child_batch) if b is not None]
            self.totals.superseded_rollouts += sum(b.started for b in batches)
            self._collect_quietly(batches)
            if slot.child is not None and slot.child.status in ("speculative", "proposed"):
                self._mark_superseded(slot.child, (
                    f"proposed for iteration {slot.iteration} on the guess that the "
                    f"children of the window before it would all be rejected"
                    if slot.guess is Guess.REJECTED else
                    f"proposed while candidate {slot.parent.id} was validated, on the guess "
                    f"that it would be the parent of iteration {slot.iteration}")
                    + f"; {reason}")

    def _record_ahead_failures(self, slots: list[Slot]) -> None:
        """Proposals that failed in iterations never judged (planned ahead of an
        accepted child, or the run stopped first): errors, not verdicts."""
        for slot in slots:
            if slot.failure is not None:
                self._proposal_failed(slot.iteration, slot.parent, *slot.failure, ahead=True)

    def _supersede(self, slots: list[Slot], accepted: Candidate) -> None:
        """Children planned on the guess that ``accepted`` would be rejected: mark
        those not yet judged as superseded and count what their rollouts cost (their
        results are recorded by ``_collect_quietly``)."""
        self._record_ahead_failures(slots)
        for slot in slots:
            if slot.child is None:
                continue
            if slot.child.status == "proposed":
                self._superseded_by_window.append((self._window_start, slot.child))
                self.totals.superseded_rollouts += slot.child_batch.started
                self._mark_superseded(slot.child, f"planned before candidate {accepted.id} was "
                                                  f"accepted; iteration {slot.iteration} is "
                                                  f"planned again")

    def _mark_superseded(self, child: Candidate, reason: str) -> None:
        """A child never judged: superseded (saying why) and counted in the totals."""
        self.totals.superseded += 1
        child.status, child.reason = "superseded", reason
        self.recorder.save_candidate(child, new=False)
