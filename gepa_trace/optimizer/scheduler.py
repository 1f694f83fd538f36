"""When the planner's steps run: windows of reflection iterations on a thread pool.

The decisions are the planner's (``optimizer.planner``); this module runs them so that
rollouts and reflection calls overlap, and takes the decisions in iteration order, so
the run is the one-at-a-time loop's at any ``workers`` and ``lookahead``.

Windows: most children are rejected, and a rejection leaves the state the next
iteration is planned from unchanged. So up to ``lookahead`` iterations are planned at
once (``_plan_window``, width from ``_window_width``), each on the guess that those
before it are rejected, and their rollouts and reflection calls share the pool; they
are judged in order, and the first accepted child ends the window (the later ones are
superseded and planned again). A slot (``optimizer.slots``) is one iteration of a
window; ``SlotState`` says how far its parent's minibatch has got.

Verdicts: a child's minibatch verdict is acted on as soon as its finished rollouts fix
it (each one still running can add only between ``min_score`` and ``perfect_score``);
it is recorded, with the whole sum, once the rest are in, at a fixed point before the
next checkpoint (``_settle``).

What runs on a guess beyond the window (while a child is validated, or while a window
is judged) is ``optimizer.speculation``'s.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable, Iterable

from gepa_trace.errors import BudgetExhausted
from gepa_trace.optimizer import provenance
from gepa_trace.optimizer.events import IterationStarted
from gepa_trace.optimizer.failures import RolloutFailed
from gepa_trace.optimizer.protocols import Rollout
from gepa_trace.optimizer.rollouts import BatchStopped, Submitted
from gepa_trace.optimizer.slots import Guess, Slot, SlotState
from gepa_trace.optimizer.state import Candidate
from gepa_trace.optimizer.stopping import StopRun


class WindowScheduler:
    """Runs the planner's iterations in windows (a part of ``Optimizer``)."""

    def _reflect_window(self, start: int, rng: random.Random) -> None:
        """Reflection iterations from ``start``, up to ``lookahead`` of them at once.

        Each is planned from the current state, as GEPA's loop would plan it if every
        iteration before it in the window were rejected. Their parents' minibatches,
        reflection calls and children's minibatches run together on the pool; then the
        iterations are judged in order, and the first accepted child ends the window:
        later iterations were planned on a state that no longer holds, so their children
        are marked superseded and those iterations are planned again (a re-plan that
        picks the same parent reuses the child and its rollouts). While the accepted
        child is validated, the next iteration runs on the guess that it is the parent.
        """
        state = self.state
        slots = self._plan_window(start, rng)
        for slot in slots:
            self._submit_slot(slot)
        for slot in slots:
            self._reflect_slot(slot)
        for slot in slots:  # children get their ids in iteration order
            self._propose_slot(slot)
        self._run_ahead(slots[-1].iteration + 1, len(slots))
        self._settle()  # the window before: its last rollouts ran while this one started
        for n, slot in enumerate(slots):
            if n:
                try:
                    self._check_stop(budget=False)
                except StopRun:
                    self._settle()
                    self._record_ahead_failures(slots[n:])
                    raise
            accepted = False
            ran = sum(b.started + b.read for b in (slot.parent_batch, slot.child_batch)
                      if b is not None)
            if slot.skip:
                self._later(functools.partial(
                    self.recorder.event, "skipped",
                    {"iteration": slot.iteration, "parent": slot.parent.id,
                     "reason": "parent is perfect on the minibatch"}))
            elif slot.failure is not None:
                self._later(functools.partial(self._proposal_failed, slot.iteration,
                                              slot.parent, *slot.failure))
            elif slot.child is not None:
                accepted = self._verdict(slot)
                # known now, stored by ``_settle``: what reads statuses to decide how
                # far to run ahead sees it at once
                slot.child.status = "accepted" if accepted else "rejected"
                self._unjudged.append((self._window_start, functools.partial(
                    self._judge_minibatch, slot, accepted)))
                if accepted:
                    self._set_aside(f"candidate {slot.child.id} of iteration "
                                    f"{slot.iteration} was accepted first")
                    later = slots[n + 1:]
                    self._supersede(later, slot.child)
                    self._validate([slot.child], guess=slot.child, iteration=slot.iteration + 1)
                    self._collect_quietly(s.child_batch for s in later)
            self._idle = 0 if ran or accepted else self._idle + 1
            state.iteration = slot.iteration + 1
            if not self._unjudged:  # else the checkpoint waits for them (``_settle``)
                self._checkpoint()
            if accepted:
                return

    def _plan_window(self, start: int, rng: random.Random) -> list[Slot]:
        """The iterations of the window, as many (up to ``lookahead``) as the rollout
        budget covers with their parents' and children's minibatches plus one
        validation; stop the run if not even one fits (no half candidates). The
        iterations run ahead (during the last validation, or while the last window
        was judged) are adopted where they match the plan, else superseded."""
        state = self.state
        slots: list[Slot] = []
        remaining = self.budget.remaining_rollouts()
        needed = len(state.val_ids)
        for iteration in range(start, start + self._window_width(start)):
            components, parent, batch = self._pick(
                iteration, rng if iteration == start else self._rng(iteration))
            spec = self._ahead[0] if self._ahead else None
            if spec is not None and (spec.iteration, spec.parent.id, spec.components,
                                     spec.batch) == (iteration, parent.id, components, batch):
                slot = spec
            else:
                self._drop_spec()
                slot = self._slot_for(iteration, components, parent, batch)
            needed += len(self.batches.missing(parent, batch)) + (
                len(batch) if slot.child is None and slot.copy_of is None
                else len(self.batches.missing(slot.child or slot.copy_of, batch)))
            if not slots:
                self._require(needed)
            elif remaining is not None and needed > remaining:
                break
            if slot is spec:
                self._ahead.pop(0)
            self._adopt(slot, ahead=bool(slots))
            slots.append(slot)
        self._drop_spec("the budget did not cover it in the window")
        return slots

    def _window_width(self, start: int) -> int:
        """How many iterations to run at once: 1 right after an accepted child, then
        doubling with every window judged without one, up to ``lookahead``. Early in a
        run most children are accepted and running ahead would mostly be wasted; later
        most are rejected, and the window widens. It depends only on what was judged,
        so a run (and a resumed run) makes the same windows at any ``workers``."""
        last = max((c.iteration for c in self.state.candidates
                    if c.status == "accepted" and c.origin != "seed" and c.iteration < start),
                   default=0)
        return min(self.config.lookahead, 2 ** min(start - 1 - last, 16))

    def _slot_for(self, iteration: int, components: list[str], parent: Candidate,
                  batch: list[str], speculative: bool = False) -> Slot:
        """A planned iteration, with the child it proposed before if there is one."""
        child = self._pending_reflection(iteration, parent.id, components)
        guess = Guess.PARENT if speculative else Guess.NONE
        if child is not None and child.status == "superseded":
            return Slot(iteration, components, parent, batch, copy_of=child, guess=guess)
        return Slot(iteration, components, parent, batch, child=child, guess=guess)

    def _announce(self, slot: Slot, ahead: bool) -> None:
        self.callbacks.emit(IterationStarted(slot.iteration, tuple(slot.components),
                                             slot.parent.id, ahead=ahead))
        event = {"iteration": slot.iteration, "kind": "reflection",
                 "components": slot.components, "parent": slot.parent.id, "ahead": ahead}
        if slot.speculative:
            event["speculative"] = True
            event["guess"] = ("the window before it is rejected" if slot.guess is Guess.REJECTED
                              else f"candidate {slot.parent.id} is its parent")
        self.recorder.event("iteration", event)

    def _submit_slot(self, slot: Slot) -> None:
        """Start the parent's minibatch (and a child's already proposed)."""
        if slot.parent_batch is None:
            slot.parent_batch = self.batches.submit([(slot.parent, slot.batch, "minibatch")])
        if slot.child is not None and slot.child_batch is None:
            slot.child_batch = self.batches.submit([(slot.child, slot.batch, "minibatch")])

    def _reflect_slot(self, slot: Slot) -> None:
        """Wait for the parent's minibatch and record it; unless it is perfect there,
        start the reflection calls (once: ``_start_ready_reflections`` may have)."""
        if slot.recorded:
            return
        rollouts = self.batches.collect(slot.parent_batch)[0]
        if not slot.started:
            self._begin_reflection(slot, rollouts)
        slot.state = SlotState.RECORDED

    def _begin_reflection(self, slot: Slot, rollouts: list[Rollout]) -> None:
        slot.rollouts = rollouts
        slot.parent_sum = sum(r.score for r in rollouts)
        slot.skip = self._parent_is_perfect(rollouts)
        if not slot.skip and slot.child is None and slot.copy_of is None:
            slot.calls = self._start_reflections(slot)
        slot.state = SlotState.REFLECTING

    def _start_reflections(self, slot: Slot) -> list[tuple]:
        """Start the calls for the slot's reflection prompts: (component, current
        version, prompt, reply), ``reply()`` waiting for the reply text."""
        return [(component, current, prompt, self._start_reflection(prompt))
                for component, current, prompt in self._reflection_prompts(slot)]

    def _start_reflection(self, prompt: str) -> Callable[[], str]:
        """Start the reflection call for ``prompt``, counted as one reflection call; the
        function returned waits for its reply (or raises the BudgetExhausted that
        refused it)."""
        try:
            if getattr(self.reflection_lm, "budget", None) is not self.budget:
                self.budget.start_llm_call("reflection")
        except BudgetExhausted as exc:
            return functools.partial(_raise, exc)
        roles = self.totals.llm_calls_by_role
        roles["reflection"] = roles.get("reflection", 0) + 1
        return self._reflections.submit(self.reflection_lm, prompt).result

    def _propose_slot(self, slot: Slot) -> None:
        """The slot's child (waiting for its reflection replies), and its minibatch started."""
        if not slot.skip and slot.child is None and slot.failure is None:
            slot.child = (self._copy(slot.copy_of, slot.speculative)
                          if slot.copy_of is not None else self._proposal(slot))
        if slot.child is not None and slot.child_batch is None:
            slot.child_batch = self.batches.submit([(slot.child, slot.batch, "minibatch")])

    def _copy(self, superseded: Candidate, speculative: bool = False) -> Candidate:
        """A superseded child proposed again by the same iteration from the same parent:
        a new candidate (ids follow the iterations), sharing the earlier one's rollouts."""
        child = Candidate(self.state.next_id(), dict(superseded.prompts),
                          parents=superseded.parents, origin=superseded.origin,
                          component=superseded.component, iteration=superseded.iteration,
                          diagnosis=superseded.diagnosis, minibatch=superseded.minibatch,
                          meta={**superseded.meta, "proposed_before_as": superseded.id,
                                **provenance.renumbered(superseded.meta, superseded.id,
                                                        self.state.next_id())},
                          status="speculative" if speculative else "proposed")
        self._propose(child, [])
        return child

    def _verdict(self, slot: Slot) -> bool:
        """Whether the slot's child beats its parent on the minibatch, as soon as the
        finished rollouts fix it: each one still running adds between ``min_score``
        and ``perfect_score`` (scores are clamped into that range), so the verdict is
        the one the whole sum gives, at any ``workers``; a rollout that failed counts as
        one still running, so only the others can fix it. Its recording waits
        (``_judge_minibatch``). Raises BatchStopped when a rollout could not finish,
        RolloutFailed when the verdict needs one that failed."""
        for bounds in self.batches.score_bounds(slot.child_batch,
                                                wake=self._start_ready_reflections):
            if bounds is None:
                break
            low, high = bounds
            if self._better(low, slot.parent_sum):
                return True
            if not self._better(high, slot.parent_sum):
                return False
        self._settle()
        rollouts = self.batches.collect(slot.child_batch)[0]  # raises BatchStopped, RolloutFailed
        return self._better(sum(r.score for r in rollouts), slot.parent_sum)

    def _judge_minibatch(self, slot: Slot, accepted: bool) -> None:
        """Record the verdict ``_verdict`` gave, with the child's minibatch sum. If the
        budget stopped one of its rollouts after the verdict was fixed, the sum is of
        those that finished, and the reason says so. A rollout that failed raises
        RolloutFailed: the record needs the whole sum, so the verdict is not recorded
        (a resumed run takes it again)."""
        stopped = None
        try:
            self.batches.collect(slot.child_batch)
        except BatchStopped as stop:
            stopped = stop.reason
        scores = [r.score for r in (self.state.cached(slot.child, e) for e in slot.batch)
                  if r is not None]
        why = "no improvement on the minibatch"
        if stopped is not None:
            why += (f"; {len(slot.batch) - len(scores)} of its {len(slot.batch)} rollouts "
                    f"did not finish ({stopped}), the sum is of the others")
        self._judge(slot.child, slot.iteration, slot.parent_sum, sum(scores), accepted, why)

    def _later(self, record: Callable[[], None]) -> None:
        """Record a judged iteration's outcome now, or after those still unrecorded."""
        if self._unjudged:
            self._unjudged.append((self._window_start, record))
        else:
            record()

    def _settle(self) -> None:
        """Record the outcomes of judged iterations waiting for their last rollouts (in
        iteration order), then checkpoint: a checkpoint never moves past a verdict the
        store does not hold, so a resumed run judges that iteration again, the same."""
        if not self._unjudged:
            return
        while self._unjudged:
            # taken off once recorded: a record that raises (RolloutFailed) stays first,
            # and ``_stop_on_failure`` goes back to its iteration
            self._unjudged[0][1]()
            self._unjudged.pop(0)
        self._checkpoint()

    def _validate(self, candidates: list[Candidate], guess: Candidate | None = None,
                  iteration: int | None = None) -> None:
        """Score candidates on every validation example (all at once), then, in order,
        let each join the pool and update the fronts and the best. Meanwhile
        (lookahead > 1) ``iteration`` runs as far as it can on the guess that ``guess``
        will be its parent (``_plan_window`` adopts it or supersedes it)."""
        if not candidates:
            return
        self._set_aside()
        spec = self._speculate(guess, iteration) if guess is not None else None
        submitted = self.batches.submit([(c, self.state.val_ids, "val") for c in candidates])
        self._settle()  # the verdicts before (the validated child's too)
        if spec is not None:
            spec = self._advance_spec(spec)
        self.batches.wait(submitted, wake=self._start_ready_reflections)
        self.batches.collect(submitted)
        self._drop_spec()  # those set aside (nothing has run ahead since)
        for candidate in candidates:
            self._admit(candidate)
        self._ahead = [spec] if spec is not None else []

    def _collect_quietly(self, batches: Iterable[Submitted | None]) -> None:
        """Record what these submissions ran; their results decide nothing any more."""
        for batch in batches:
            if batch is not None:
                with contextlib.suppress(BatchStopped, RolloutFailed):
                    self.batches.collect(batch)


def _raise(exc: BaseException) -> str:
    raise exc
