"""GEPA's loop, as decisions: what each iteration picks, proposes and accepts.

This module reads top to bottom as one iteration of GEPA (arXiv 2507.19457; the
``gepa`` package's ``GEPAEngine``). It holds the choices only: no threads, no
futures, no lookahead. Rollouts, reflection calls and when each step runs are the
scheduler's (``optimizer.scheduler``, ``optimizer.speculation``), which may run steps
ahead on a guess but takes every decision here, in iteration order, so the run is the
one-at-a-time loop's.

0. Iteration 0 (``Optimizer._initialize``): the seed candidate (and warm-start ones)
   scored on the validation set make the first pool and fronts.
1. Select the component(s) to improve (round robin or all, ``selection``) and a parent
   from that component's Pareto front (``_pick``; randomness from ``_rng``).
2. Take the next minibatch of training examples (epoch-shuffled, ``sampler``), its
   last place given to a validation example the parent fails (``_minibatch``), and
   run the parent on it (with traces: the rollouts carry per-component records; the seed's
   are read from its recorded production runs where they carried its prompts, for
   free: ``replay.recorded``).
3. Skip the iteration if the parent is perfect on every minibatch example
   (``_parent_is_perfect``).
4. Reflect: one reflection prompt per component (``_reflection_prompts``) from the
   rollouts' inputs, outputs and feedback, and from the parent's stored rollouts on
   more validation examples it fails (``_reflection_failures``).
5. Propose: the child is the parent with the new instructions (``_proposal``); a
   reply that repeats an instruction or duplicates a candidate proposes nothing.
6. Run the child on the same minibatch and accept it only if its sum beats the
   parent's (``_better``, ``_judge``; strictly by default).
7. Score an accepted child on the whole validation set; it joins the pool, and the best
   candidate and per-component fronts are updated (``_admit``, ``_update_fronts``).
8. Merge when due (``_merge_due``: right after an accepted reflection child): combine
   two front candidates that improved different components of a common ancestor
   (``_merge_plan``, ``_merge_child``), test the merge on a stratified validation
   subsample and accept it if it does at least as well as its better parent
   (``_judge_merge``); then validate it as in step 7.

``GepaPlanner`` is a part of ``Optimizer`` and reads its run state (``state``,
``config``, ``sampler``, selectors, ``recorder``, ``callbacks``).
"""

from __future__ import annotations

import random

from gepa_trace.errors import BudgetExhausted, ConfigError, LMError
from gepa_trace.optimizer import provenance
from gepa_trace.optimizer.events import (
    CandidateAccepted,
    CandidateProposed,
    CandidateRejected,
    CandidateValidated,
    FrontChanged,
    IterationStarted,
    OptimizerErrorEvent,
)
from gepa_trace.optimizer.merge import (
    MergePlan,
    find_merge,
    front_candidates,
    stratified_subsample,
)
from gepa_trace.optimizer.protocols import Rollout
from gepa_trace.optimizer.reflection import build_prompt, parse_reply, reflection_examples
from gepa_trace.optimizer.result import HistoryPoint
from gepa_trace.optimizer.slots import Slot
from gepa_trace.optimizer.state import Candidate, first_live
from gepa_trace.optimizer.stopping import StopRun
from gepa_trace.prompts import PromptVersion

#: The kind of a proposal that gave no child because the reflection kept every
#: component's instruction as it was (not an error: nothing to change was found).
NO_CHANGE = "no_change"


class GepaPlanner:
    """The decisions of GEPA's loop, in its order (see the module docstring)."""

    # ---------------- the randomness of an iteration
    def _rng(self, iteration: int) -> random.Random:
        """The random source of ``iteration``'s choices (the same in every process)."""
        return random.Random(f"gepa-trace:{self.config.seed}:{iteration}")

    # ---------------- steps 1-2: components, parent, minibatch
    def _pick(self, iteration: int, rng: random.Random
              ) -> tuple[list[str], Candidate, list[str]]:
        """Steps 1-2, select: what GEPA's loop picks for ``iteration`` from the current
        state: the components to improve, the parent and the minibatch. Planning and
        running ahead both pick through here, so a guess that holds plans the same slot."""
        components = self.select_components(self.components, iteration)
        parent = self.state.candidates[self.select_parent(self.state, components[0], rng)]
        return components, parent, self._minibatch(parent, iteration)

    def _minibatch(self, parent: Candidate, iteration: int) -> list[str]:
        """Step 2, the minibatch: the sampler's next one, its last
        ``val_failures_in_minibatch`` places given to validation examples the parent
        fails, drawn for this iteration (none if it fails none).

        Why: once the parent solves most inputs, a minibatch of sampled training
        examples often holds nothing it fails, and the iteration is spent on a parent
        that is skipped as perfect, or on a reflection with nothing to learn from; the
        failures that remain are known, from the parent's validation scores. Its rollouts
        on them are stored, so that part of its minibatch costs nothing, and the
        minibatch keeps its size, so an iteration costs what it did.
        How acceptance stays honest: the child must still beat its parent on the same
        examples, the sampled ones included, so a fix that breaks a sampled example it
        does not pay for is rejected; the examples chosen are ones the parent fails, so
        the minibatch test leans toward children that fix them, which is its purpose;
        what decides the pool, the fronts and the best is every validation example,
        and what decides export is the held-out split, which the loop never sees.
        Deterministic: the parent's validation scores are known when it is picked."""
        sampled = self.sampler.batch(iteration - 1)
        count = min(self.config.val_failures_in_minibatch, len(sampled) - 1)
        # grown validation holds training ids: none of the kept part is chosen
        chosen = self._val_failures(parent, count, sampled[:len(sampled) - count],
                                    f"val-failures:{self.config.seed}:{iteration}")
        head = sampled[:len(sampled) - len(chosen)]
        return head + [e for e in chosen if e not in head]

    def _val_failures(self, parent: Candidate, count: int, excluded: list[str],
                      draw: str) -> list[str]:
        """Up to ``count`` validation examples ``parent`` fails, none of ``excluded``,
        drawn with the random source named ``draw`` (none while its scores are not all
        known). Its rollouts on them are stored: what they show costs no rollout."""
        scores = self.state.val_scores(parent) if count > 0 else None
        if not scores:
            return []
        failed = [e for e in self.state.val_ids
                  if scores[e] < self.config.perfect_score and e not in excluded]
        random.Random(draw).shuffle(failed)
        return failed[:count]

    # ---------------- step 3: skip a parent that is already perfect
    def _parent_is_perfect(self, rollouts: list[Rollout]) -> bool:
        """Step 3, skip: the parent solves every minibatch example (nothing to reflect on)."""
        return self.config.skip_perfect_score and all(
            r.score >= self.config.perfect_score for r in rollouts)

    # ---------------- step 4: reflect
    def _reflection_prompts(self, slot: Slot) -> list[tuple[str, PromptVersion, str]]:
        """Step 4, reflect: one reflection prompt per component to improve, (component,
        its current version, prompt), built from the parent's minibatch rollouts."""
        slot.read = self._reflection_failures(slot)
        examples = [self.examples[e] for e in slot.batch + slot.read]
        rollouts = list(slot.rollouts) + [self.state.cached(slot.parent, e) for e in slot.read]
        prompts = []
        for component in slot.components:
            current = self.state.versions[(component, slot.parent.prompts[component])]
            prompts.append((component, current, build_prompt(
                component, current.instruction,
                reflection_examples(component, examples, rollouts),
                self.config.reflection.max_tokens,
                self.config.reflection.templates.get(component))))
        return prompts

    def _reflection_failures(self, slot: Slot) -> list[str]:
        """Step 4, what else the reflection reads: up to ``val_failures_in_reflection``
        validation examples the parent fails outside its minibatch, drawn for this
        iteration, shown after the minibatch's (and left out first if the prompt is too
        long). Their rollouts are the parent's stored validation rollouts, with their
        records: no rollout is spent.

        Why: a minibatch shows one or two failures, and a reflection that sees one
        failure of a kind writes a rule for that one input, or, seeing none that its
        component causes, an edit the component does not need (which can sink a child
        that fixes another component). More failures show which rule a component
        needs and which components need none. Acceptance is unchanged: the child must
        beat its parent on the minibatch alone, and the pool, the fronts and the best
        are decided on every validation example (the validation score is optimistic,
        as with ``_minibatch``; export is decided on the held-out split)."""
        return self._val_failures(
            slot.parent, self.config.val_failures_in_reflection, slot.batch,
            f"reflection-failures:{self.config.seed}:{slot.iteration}")

    # ---------------- step 5: propose
    def _proposal(self, slot: Slot) -> Candidate | None:
        """Step 5, propose: the child built from the replies to the slot's reflection
        calls (each ``reply()`` gives the text or raises the call's error), or None
        (``slot.failure`` says why; it is recorded when the iteration is judged). Any
        other exception of the reflection LM propagates."""
        state = self.state
        parent, iteration = slot.parent, slot.iteration
        new_versions, diagnoses, meta = [], [], {}
        for component, current, prompt, reply in slot.calls:
            meta[f"reflection_prompt_chars:{component}"] = len(prompt)
            try:
                proposal = parse_reply(reply())
                version = current.with_instruction(proposal.instruction, run_id=self.run_id)
            except BudgetExhausted as exc:
                raise StopRun(str(exc)) from exc
            except LMError as exc:
                slot.failure = ("reflection_lm",
                                f"reflection LM error on {component}: {exc}")
                return None
            except ConfigError as exc:
                slot.failure = ("reflection_reply",
                                f"unusable reflection reply for {component}: {exc}")
                return None
            new_versions.append(version)
            diagnoses.append(proposal.diagnosis if len(slot.components) == 1
                             else f"[{component}] {proposal.diagnosis}")
        prompts = dict(parent.prompts)
        prompts.update({pv.component: pv.version for pv in new_versions})
        if prompts == parent.prompts:
            slot.failure = (NO_CHANGE, "the reflection kept every instruction unchanged")
            return None
        existing = state.find(prompts)
        if existing is not None:
            slot.failure = ("reflection_reply",
                            f"the proposal duplicates candidate {existing.id}")
            return None
        for pv in new_versions:
            state.add_version(pv)
        # where each line of the changed instructions came from (optimizer.provenance)
        meta.update(provenance.reflection_provenance(
            state.candidates, parent.id, state.next_id(), iteration,
            {pv.component: (state.versions[(pv.component, parent.prompts[pv.component])]
                            .instruction, pv.instruction)
             for pv in new_versions if pv.version != parent.prompts[pv.component]},
            [self.examples[e] for e in slot.batch + slot.read]))
        if slot.read:
            meta["reflection_read"] = list(slot.read)
        child = Candidate(state.next_id(), prompts, parents=(parent.id,), origin="reflection",
                          component=",".join(slot.components), iteration=iteration,
                          diagnosis="\n\n".join(diagnoses), minibatch=tuple(slot.batch),
                          meta=meta, status="speculative" if slot.speculative else "proposed")
        child.minibatch_parent_sum = slot.parent_sum
        self._propose(child, new_versions)
        return child

    def _pending_reflection(self, iteration: int, parent_id: int,
                            components: list[str]) -> Candidate | None:
        """This iteration's child of this parent if one was proposed already (by a run
        that was killed, while the parent was validated, or ahead of an accepted child:
        then it is superseded)."""
        found = [c for c in self.state.candidates
                 if c.iteration == iteration and c.origin == "reflection"
                 and c.parents == (parent_id,) and c.component == ",".join(components)]
        return (first_live(found) or next((c for c in found if c.status == "speculative"), None)
                or (found[0] if found else None))

    def _existing(self, prompts: dict, iteration: int, origin: str) -> Candidate | None:
        """A stored candidate with these prompts, unless it is this iteration's own
        pending proposal (a resumed run redoing its interrupted iteration)."""
        found = self.state.find(prompts)
        if found is None or (found.iteration == iteration and found.origin == origin):
            return None
        return found

    def _propose(self, candidate: Candidate, versions: list[PromptVersion]) -> None:
        self.state.add_candidate(candidate)
        self.recorder.save_versions(versions, candidate.id)
        self.recorder.save_candidate(candidate, new=True)
        self.callbacks.emit(CandidateProposed(candidate.iteration, candidate.id,
                                              candidate.origin, candidate.parents,
                                              candidate.component, candidate.diagnosis))

    def _proposal_failed(self, iteration: int, parent: Candidate, kind: str,
                         reason: str, ahead: bool = False) -> None:
        """Record a proposal that gave no child. ``ahead``: its iteration was planned
        ahead and never judged (it is planned again, or the run stopped first), so the
        failure is an error but not a verdict on the iteration. ``NO_CHANGE`` (the
        reflection found nothing to change in any component) is no error."""
        payload = {"iteration": iteration, "parent": parent.id, "kind": kind, "reason": reason}
        if ahead:
            payload["ahead"] = True
        self.recorder.event("proposal_failed", payload)
        if kind != NO_CHANGE:
            self.totals.reflection_errors += 1
            self.callbacks.emit(OptimizerErrorEvent(kind, reason, iteration=iteration))
        if not ahead:
            self.callbacks.emit(CandidateRejected(iteration, None, reason))

    # ---------------- step 6: accept on the minibatch
    def _better(self, child_sum: float, parent_sum: float) -> bool:
        """Step 6, accept: the child beats its parent on the minibatch sum."""
        return (child_sum > parent_sum if self.config.acceptance == "strict_improvement"
                else child_sum >= parent_sum)

    def _judge(self, child: Candidate, iteration: int, parent_sum: float, child_sum: float,
               better: bool, why_not: str) -> bool:
        """Record the child as accepted (True) or rejected on its minibatch sums."""
        child.minibatch_parent_sum, child.minibatch_child_sum = parent_sum, child_sum
        if better:
            child.status, child.reason = "accepted", None
            self.recorder.save_candidate(child, new=False)
            self.callbacks.emit(CandidateAccepted(iteration, child.id, parent_sum, child_sum))
            return True
        child.status = "rejected"
        child.reason = f"{why_not} ({child_sum:g} vs {parent_sum:g})"
        self.recorder.save_candidate(child, new=False)
        self.callbacks.emit(CandidateRejected(iteration, child.id, child.reason,
                                              parent_sum, child_sum))
        return False

    # ---------------- step 7: validate, update the pool and the fronts
    def _admit(self, candidate: Candidate) -> None:
        """Step 7, update: a candidate scored on validation joins the pool; the best and
        the fronts follow."""
        state = self.state
        previous_best = state.best_id() if state.pool else None
        previous_score = state.mean_val(previous_best) if previous_best is not None else None
        state.join_pool(candidate)
        self.recorder.save_candidate(candidate, new=False)
        best = state.best_id()
        new_best = previous_score is None or state.mean_val(best) > previous_score
        if new_best:
            self.history.append(HistoryPoint(self.totals.rollouts, state.mean_val(best), best,
                                            len(state.val_ids)))
            self.recorder.event("new_best", {"candidate": best, "score": state.mean_val(best),
                                             "rollouts": self.totals.rollouts})
        self.callbacks.emit(CandidateValidated(candidate.iteration, candidate.id,
                                               candidate.val_score, best, state.mean_val(best),
                                               new_best))
        self._update_fronts()
        self._checkpoint()

    def _update_fronts(self) -> None:
        """Record and announce every component front that changed."""
        for component in self.components:
            versions = tuple(self._front(component).versions())
            before = self._fronts.get(component, ())
            if versions != before:
                self._fronts[component] = versions
                added = tuple(v for v in versions if v not in before)
                removed = tuple(v for v in before if v not in versions)
                self.recorder.event("front_changed", {"component": component,
                                                      "versions": list(versions),
                                                      "added": list(added),
                                                      "removed": list(removed)})
                self.callbacks.emit(FrontChanged(component, versions, added, removed))

    def _front(self, component: str):
        return self.state.front(component, self.config.secondary_for(component))

    # ---------------- step 8: merge when due
    def _merge_due(self, iteration: int) -> bool:
        """Step 8, merge when due: the iteration before accepted a reflection child into
        the pool, merges are on and fewer than ``max_merges`` were accepted."""
        merge = self.config.merge
        if not merge.enabled or merge.max_merges == 0:
            return False
        accepted = sum(1 for c in self.state.candidates
                       if c.origin == "merge" and c.status == "accepted")
        if accepted >= merge.max_merges:
            return False
        return any(c.iteration == iteration - 1 and c.origin == "reflection"
                   and c.id in self.state.pool for c in self.state.candidates)

    def _merge_plan(self, iteration: int, rng: random.Random) -> MergePlan | None:
        """Step 8, merge: two front candidates that each improved a component the other
        did not, from a common ancestor, combined (None when no pair qualifies)."""
        return find_merge(self.state, front_candidates(self.state, self.config.secondary_for),
                          rng, self.tried_triplets, self.tried_results,
                          self.config.merge.max_attempts,
                          exists=lambda p: self._existing(p, iteration, "merge") is not None)

    def _merge_child(self, plan: MergePlan, iteration: int, rng: random.Random
                     ) -> tuple[Candidate, list[str]]:
        """The merged child (proposed before by this iteration, or now) and the stratified
        validation subsample it is tested on."""
        state = self.state
        first, second = state.candidates[plan.first], state.candidates[plan.second]
        subsample = stratified_subsample(state.val_scores(first), state.val_scores(second),
                                         state.val_ids, self.config.merge.subsample_size, rng)
        self.callbacks.emit(IterationStarted(iteration, ("merge",), plan.first))
        self.recorder.event("iteration", {"iteration": iteration, "kind": "merge",
                                          "parents": [plan.first, plan.second]})
        child = self._pending(plan.prompts, iteration, "merge")
        if child is None:
            child = Candidate(state.next_id(), plan.prompts, parents=(plan.first, plan.second),
                              origin="merge", iteration=iteration, minibatch=tuple(subsample),
                              meta={"ancestor": plan.ancestor,
                                    "sources": {c: s for c, s in plan.sources.items()},
                                    "provenance": provenance.merge_provenance(
                                        state.candidates, plan.first, plan.sources)})
            self._propose(child, [])
        return child, subsample

    def _judge_merge(self, child: Candidate, plan: MergePlan, iteration: int,
                     subsample: list[str], rollouts: list[Rollout]) -> bool:
        """Accept the merged child if its subsample sum is at least its better parent's."""
        state = self.state
        child_sum = sum(r.score for r in rollouts)
        best_parent = max(sum(state.val_scores(state.candidates[p])[e] for e in subsample)
                          for p in (plan.first, plan.second))
        return self._judge(child, iteration, best_parent, child_sum, child_sum >= best_parent,
                           "merge scored below its better parent on the validation subsample")

    def _pending(self, prompts: dict, iteration: int, origin: str) -> Candidate | None:
        found = self.state.find(prompts)
        if found is not None and found.iteration == iteration and found.origin == origin:
            return found
        return None
