"""The GEPA loop.

Each iteration: (after an accepted reflection child, possibly a merge instead) pick the
component(s) to improve, pick a parent from that component's Pareto front, run the
parent on the next training minibatch, skip it if already perfect, ask the reflection
LM for a diagnosis and a new instruction, run the child on the same minibatch, accept it
only if it does better there, then score it on the validation set and update the fronts.

Lookahead: most children are rejected, and a rejection leaves the state the next
iteration is planned from unchanged. So up to ``lookahead`` iterations are planned at
once, each on the guess that those before it are rejected, and their rollouts and
reflection calls share the pool; they are judged in order, and the first accepted child
ends the window (the later ones are superseded and planned again). While an accepted
child is scored on the validation set, the next iteration already runs on the guess that
this child will be its parent (the usual choice): if the plan made after validation picks
it, that work is adopted, else it is superseded. The decisions are those of the
one-at-a-time loop; a wrong guess costs only its rollouts and reflection calls.

Verdicts: a child's minibatch verdict is acted on as soon as its finished rollouts fix
it (each one still running can add only between ``min_score`` and ``perfect_score``);
it is recorded, with the whole sum, once the rest are in, at a fixed point before the
next checkpoint. Iterations run ahead start their reflection calls as their parents'
minibatches come in, without holding up the verdicts of the window being judged.

Reproducibility: all randomness comes from ``random.Random`` objects seeded by the run's
seed and the iteration number, consumed on the main thread in a fixed order; rollouts
run on a thread pool but their results are recorded in a fixed order. So the same seed
gives the same run at any ``workers``, and a resumed run redoes its interrupted
iteration with the same choices, reusing everything stored.

Stopping: budget limits, patience, a stop file, SIGINT/SIGTERM and a lost run lock
(``optimizer.lock``) are checked at safe points (between iterations and before each
batch); the run then returns a result.

Failed rollouts (``optimizer.failures``): a rollout that still fails after its retries
is never a score. The first decision that needs one is not taken: the run stops there
(``OptimizationResult.failed_with``, status "failed"), keeps everything recorded, and
goes back to the start of that decision's window, so ``resume`` plans that window again
with the same choices once the failure is gone, and ends as a run that never failed
would have.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from gepa_trace.errors import BudgetExhausted, ConfigError, LMError
from gepa_trace.lm.budget import Budget, Spent
from gepa_trace.optimizer import provenance
from gepa_trace.optimizer.config import OptimizerConfig
from gepa_trace.optimizer.events import (
    BudgetSpent,
    Callbacks,
    CandidateAccepted,
    CandidateProposed,
    CandidateRejected,
    CandidateValidated,
    FrontChanged,
    IterationStarted,
    OptimizerErrorEvent,
    RunStopped,
    ValidationGrown,
)
from gepa_trace.optimizer.failures import RolloutFailed, reopen_window
from gepa_trace.optimizer.lock import RunLock
from gepa_trace.optimizer.merge import find_merge, front_candidates, stratified_subsample
from gepa_trace.optimizer.persistence import RunRecorder, StoredRun, load_run
from gepa_trace.optimizer.protocols import Evaluator, Example, ReflectionLM, Rollout
from gepa_trace.optimizer.reflection import build_prompt, parse_reply, reflection_examples
from gepa_trace.optimizer.result import HistoryPoint, OptimizationResult, Totals
from gepa_trace.optimizer.rollouts import BatchEvaluator, BatchStopped, Submitted
from gepa_trace.optimizer.sampler import EpochSampler
from gepa_trace.optimizer.selection import candidate_selector, component_selector
from gepa_trace.optimizer.slots import Guess, Slot, SlotState
from gepa_trace.optimizer.state import UNJUDGED, Candidate, RunState, first_live
from gepa_trace.optimizer.stopping import SignalWatch, StopRun
from gepa_trace.optimizer.warmstart import warm_start_candidates
from gepa_trace.prompts import PromptSet, PromptVersion
from gepa_trace.store.engine import Store


class Optimizer:
    """One optimization run of one agent.

    ``evaluator`` runs a candidate's prompts on one example; ``reflection_lm`` maps a
    prompt to a reply (a ``gepa_trace.lm.LM`` whose ``budget`` is this run's budget
    meters itself; any other callable is metered here, as role "reflection").
    ``store`` (optional) receives every step as it happens; ``resume`` continues a
    stored run. ``run()`` returns an ``OptimizationResult`` however the run stops (one
    stopped by rollouts that kept failing has ``failed_with`` set and can be resumed);
    it raises only for errors of the setup (``ConfigError``, ``LockHeld``) and a store
    that stays unwritable (``StoreError``).
    """

    def __init__(self, evaluator: Evaluator, reflection_lm: ReflectionLM,
                 seed_prompts: PromptSet, train: Sequence[Example], val: Sequence[Example],
                 budget: Budget, store: Store | None = None, agent: str | None = None,
                 config: OptimizerConfig | None = None, callbacks: Iterable[object] = (),
                 run_id: str | None = None):
        self.config = (config or OptimizerConfig()).validate()
        if not isinstance(seed_prompts, PromptSet) or len(seed_prompts) == 0:
            raise ConfigError("seed_prompts must be a non-empty PromptSet")
        if not val:
            raise ConfigError("the optimizer needs at least one validation example")
        for name, examples in (("train", train), ("val", val)):
            ids = [e.id for e in examples]
            if len(set(ids)) != len(ids):
                raise ConfigError(f"{name} examples have duplicate ids")
        self.evaluator = evaluator
        self.reflection_lm = reflection_lm
        self.seed_prompts = seed_prompts
        self.train = list(train)
        self.val = list(val)
        self.budget = budget
        self.store = store
        self.agent = agent or seed_prompts.agent or "agent"
        self.callbacks = Callbacks(callbacks)
        self.run_id = run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.components = list(seed_prompts)
        self.val_start = self.config.starting_val_size(len(self.val))
        self.state = RunState(self.components, [e.id for e in self.val[:self.val_start]])
        self.examples = {e.id: e for e in self.train}
        self.examples.update({e.id: e for e in self.val})
        self.sampler = EpochSampler([e.id for e in self.train], self.config.minibatch_size,
                                    self.config.seed, [(e.meta or {}).get("user") for e in
                                                       self.train], self.config.max_user_share)
        self.select_parent = candidate_selector(self.config)
        self.select_components = component_selector(self.config)
        self.recorder = RunRecorder(store, self.run_id, self.agent)
        self.totals = Totals()
        self.history: list[HistoryPoint] = []
        self.tried_triplets: set[tuple[int, int, int]] = set()
        self.tried_results: set[str] = set()
        # (iteration, tried triplets, tried results) before that iteration's merge attempt
        self._merge_memory: tuple[int, list, list] | None = None
        self.resumed: StoredRun | None = None
        self._signals = SignalWatch()
        self._wall_offset = 0.0
        self._idle = 0  # iterations in a row that ran nothing new
        # iterations run ahead on a guess (that a validated child is the next parent, or
        # that a window's children are all rejected), in iteration order
        self._ahead: list[Slot] = []
        # (slot, why) of iterations run ahead on a guess that failed when a child was
        # accepted: recorded as superseded once that child's validation is in
        self._dropping: list[tuple[Slot, str]] = []
        # (window start, record) of what judged iterations still have to record, in
        # iteration order: a child's verdict is acted on as soon as its finished
        # rollouts fix it, and recorded (with its minibatch sum) once the rest are in;
        # see ``_settle``
        self._unjudged: list[tuple[int, Callable[[], None]]] = []
        # the first iteration of the window (or merge) being run: where a run stopped
        # by a failed rollout resumes, so that it plans the same windows
        self._window_start = 0
        # (window start, child) of children superseded by a child accepted in that window
        self._superseded_by_window: list[tuple[int, Candidate]] = []
        self.failed_with: str | None = None  # why rollouts kept failing, when they stopped the run
        self._fronts: dict[str, tuple[str, ...]] = {}
        self._lock: RunLock | None = None
        self._started = time.monotonic()

    # ---------------------------------------------------------------- resume
    @classmethod
    def resume(cls, run_id: str, *, evaluator: Evaluator, reflection_lm: ReflectionLM,
               train: Sequence[Example], val: Sequence[Example], budget: Budget,
               store: Store, callbacks: Iterable[object] = (),
               config: OptimizerConfig | None = None) -> Optimizer:
        """An Optimizer that continues stored run ``run_id`` (its config unless given):
        stored candidates and evaluations are reused, never re-run, and the budget
        carries over what the earlier process spent."""
        stored = load_run(store, run_id)
        seed = next((c for c in stored.candidates if c.origin == "seed"), None)
        if seed is None:
            raise ConfigError(f"run {run_id!r} has no seed candidate to resume from")
        seed_prompts = PromptSet({c: stored.versions[(c, v)] for c, v in seed.prompts.items()},
                                 agent=stored.row.agent)
        opt = cls(evaluator, reflection_lm, seed_prompts, train, val, budget, store,
                  agent=stored.row.agent,
                  config=config or OptimizerConfig.from_dict(stored.config),
                  callbacks=callbacks, run_id=run_id)
        opt._restore(stored)
        return opt

    def _restore(self, stored: StoredRun) -> None:
        state = self.state
        added = list(stored.totals.get("val_added") or [])
        unknown = [i for i in added if i not in self.examples]
        if unknown:
            raise ConfigError(f"run {self.run_id!r} grew its validation set with examples "
                              f"this dataset lacks: {', '.join(unknown[:5])}; resume it on "
                              "the dataset it started with")
        state.extend_val(added)
        for pv in stored.versions.values():
            state.add_version(pv)
        for candidate in stored.candidates:
            state.add_candidate(candidate)
        # a row with an error is a failed rollout of a run recorded before errors stopped
        # being scores (its 0 was never a real score): left out, so it runs again
        usable = [(c, e, r) for c, e, r in stored.evaluations if not r.error]
        for candidate_id, example_id, rollout in usable:
            state.remember(state.candidates[candidate_id], example_id, rollout)
        state.iteration = stored.row.iteration
        for candidate in state.candidates:
            if (candidate.iteration < state.iteration and candidate.status == "accepted"
                    and state.val_scores(candidate) is not None):
                state.join_pool(candidate)
            if candidate.origin == "merge" and candidate.iteration < state.iteration:
                self.tried_triplets.add((*candidate.parents, candidate.meta.get("ancestor", -1)))
                self.tried_results.add(candidate.key)
        snapshot = stored.totals
        tried = snapshot.get("merges_tried")
        if tried is not None:  # else (a run stored before it was kept) as rebuilt above
            self.tried_triplets = {tuple(t) for t in tried["triplets"]}
            self.tried_results = set(tried["results"])
        totals = Totals.from_dict(snapshot)
        rollouts = [r for _c, _e, r in usable]
        totals.rollouts = len(rollouts)
        totals.rollout_cache_hits = sum(r.cache_hits for r in rollouts)
        # the stored rollouts' calls, and those of failed ones (stored only as events)
        totals.llm_calls_by_role["task"] = (sum(r.llm_calls for r in rollouts)
                                            + totals.failed_rollout_llm_calls)
        self.totals = totals
        self._wall_offset = totals.wall_seconds
        self.history = [HistoryPoint(**p) for p in snapshot.get("history", [])]
        spent = totals.budget or {}
        # rollouts: the stored ones. The snapshot's count also holds rollouts reserved
        # for the queue when the process died, which never ran (or ran and were lost
        # with it, as the rollouts in flight at a kill are)
        self.budget.restore(Spent(
            rollouts=totals.rollouts,
            llm_calls=int(spent.get("llm_calls", 0)), tokens=int(spent.get("tokens", 0)),
            cost_usd=float(spent.get("cost_usd", 0.0)),
            seconds=float(spent.get("seconds", 0.0)),
            llm_calls_by_role=dict(spent.get("llm_calls_by_role", {}))))
        self._fronts = {c: tuple(self._front(c).versions()) for c in self.components} \
            if state.pool else {}
        self.resumed = stored

    # ---------------------------------------------------------------- run
    def run(self) -> OptimizationResult:
        """Run until a limit, patience, a stop file or a signal; return the result."""
        self._started = time.monotonic()
        with contextlib.ExitStack() as stack:
            if self.store is not None:
                lock = RunLock(self.store, self.agent, self.run_id,
                               self.config.lock_stale_seconds)
                lock.acquire()
                stack.callback(lock.release)
                self._lock = lock
            if self.config.handle_signals:
                self._signals.install(stack)
            executor = stack.enter_context(ThreadPoolExecutor(
                max_workers=self.config.workers, thread_name_prefix="gepa-rollout"))
            # reflection calls have their own threads: queued behind rollouts, the
            # reflection of one iteration would wait for the minibatches of the next
            self._reflections = stack.enter_context(ThreadPoolExecutor(
                max_workers=min(32, (self.config.lookahead + 1) * len(self.components)),
                thread_name_prefix="gepa-reflect"))
            self.batches = BatchEvaluator(self.evaluator, self.state, self.budget, executor,
                                          self.examples, self.run_id, self.agent,
                                          self._store_rollout, self._on_rollout,
                                          self._on_cache_hit,
                                          (self.config.min_score, self.config.perfect_score),
                                          on_failed=self._on_failed,
                                          retries=self.config.rollout_retries)
            if self.resumed is None:
                self.recorder.create_run(self.config.to_dict(), self.config.seed,
                                         self.config.warm_start_from)
            else:
                self.recorder.reopen_run(self.resumed.last_seq)
            try:
                reason, requested = self._loop()
                self.batches.drain()
            except BaseException as exc:
                self.recorder.finish("failed", f"{type(exc).__name__}: {exc}",
                                     self.state.iteration, self._snapshot(), self._best())
                raise
            self._checkpoint()
            self.callbacks.emit(RunStopped(reason, self.state.iteration))
            self.recorder.event("stopped", {"reason": reason, "failed_with": self.failed_with})
            status = ("failed" if self.failed_with is not None
                      else "stopped" if requested else "finished")
            self.recorder.finish(status, reason, self.state.iteration, self._snapshot(),
                                 self._best())
        return self._result(reason)

    def _loop(self) -> tuple[str, bool]:
        try:
            if self.state.iteration == 0:
                self._initialize()
            while True:
                self._window_start = self.state.iteration
                self._check_stop()
                iteration = self.state.iteration
                rng = self._rng(iteration)
                before = self.totals.rollouts
                merge_due = self._merge_due(iteration)
                if merge_due:  # what a resume of this iteration starts from
                    self._merge_memory = (iteration, sorted(self.tried_triplets),
                                          sorted(self.tried_results))
                if merge_due and self._merge(iteration, rng):
                    self._idle = self._idle + 1 if self.totals.rollouts == before else 0
                    self.state.iteration = iteration + 1
                    self._checkpoint()
                else:
                    self._reflect_window(iteration, rng)
        except StopRun as stop:
            self._settle()
            self._drop_spec("the run stopped first")
            return stop.reason, stop.requested
        except BatchStopped as stop:
            self._settle()
            self._drop_spec("the run stopped first")
            return stop.reason, False
        except RolloutFailed as failure:
            return self._stop_on_failure(failure), False

    def _stop_on_failure(self, failure: RolloutFailed) -> str:
        """The run stops: a decision needs a rollout that kept failing. Verdicts not yet
        recorded stay unrecorded, and the run goes back to the start of the window whose
        decision was not taken (or of the earlier one with verdicts unrecorded): the
        checkpoint names that iteration and the window's children are proposed again,
        so a resumed run plans the same window, judges its children again from the
        stored rollouts (the same verdicts) and reuses every child and rollout. Work
        run ahead is left as a killed process leaves it (``drain`` records the rollouts
        it finished)."""
        start = self._window_start
        if self._unjudged:
            start = min(start, self._unjudged[0][0])
            self._unjudged = []
        self.state.iteration = start
        superseded = [child for window, child in self._superseded_by_window if window >= start]
        for child in reopen_window(self.state, start, superseded):
            self.recorder.save_candidate(child, new=False)
        self._ahead, self._dropping = [], []
        self.failed_with = failure.message
        self.recorder.event("rollouts_failed", {"iteration": self.state.iteration,
                                                "candidate": failure.candidate_id,
                                                "example": failure.example_id,
                                                "error": failure.error})
        return f"rollouts kept failing: {failure.message}"

    # ---------------------------------------------------------------- stopping
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
            best = self.state.candidates[self.state.best_id()]
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

    # ---------------------------------------------------------------- setup
    def _initialize(self) -> None:
        """Iteration 0: the seed (and warm-start) candidates, scored on validation."""
        state = self.state
        if not state.candidates:
            for pv in (self.seed_prompts.version_of(c) for c in self.components):
                state.add_version(pv)
            seed = Candidate(0, self.seed_prompts.versions(), origin="seed", status="accepted",
                             meta={"provenance": provenance.seed_provenance(self.seed_prompts)})
            self._propose(seed, [self.seed_prompts.version_of(c) for c in self.components])
            for candidate, versions in warm_start_candidates(
                    self.store, self.config.warm_start_from, self.agent, self.run_id, state,
                    self.seed_prompts, self.config.warm_start_max):
                for pv in versions:
                    state.add_version(pv)
                self._propose(candidate, versions)
        first = [c for c in state.candidates if c.iteration == 0]
        self._validate(first, guess=first[0] if len(first) == 1 else None, iteration=1)
        state.iteration = 1
        self._checkpoint()

    # ---------------------------------------------------------------- iterations
    def _merge_due(self, iteration: int) -> bool:
        merge = self.config.merge
        if not merge.enabled or merge.max_merges == 0:
            return False
        accepted = sum(1 for c in self.state.candidates
                       if c.origin == "merge" and c.status == "accepted")
        if accepted >= merge.max_merges:
            return False
        return any(c.iteration == iteration - 1 and c.origin == "reflection"
                   and c.id in self.state.pool for c in self.state.candidates)

    def _merge(self, iteration: int, rng: random.Random) -> bool:
        """Try a merge; False when no pair qualifies (the iteration then reflects)."""
        state = self.state
        pool_ids = front_candidates(state, self.config.secondary_for)
        plan = find_merge(state, pool_ids, rng, self.tried_triplets, self.tried_results,
                          self.config.merge.max_attempts,
                          exists=lambda p: self._existing(p, iteration, "merge") is not None)
        if plan is None:
            return False
        self._settle()
        self._drop_spec("a merge took the iteration")
        first, second = state.candidates[plan.first], state.candidates[plan.second]
        scores_a, scores_b = state.val_scores(first), state.val_scores(second)
        subsample = stratified_subsample(scores_a, scores_b, state.val_ids,
                                         self.config.merge.subsample_size, rng)
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
        self._require(len(self.batches.missing(child, subsample + state.val_ids)))
        rollouts = self.batches.evaluate(child, subsample, "merge")
        child_sum = sum(r.score for r in rollouts)
        best_parent = max(sum(scores_a[e] for e in subsample), sum(scores_b[e] for e in subsample))
        if self._judge(child, iteration, best_parent, child_sum, child_sum >= best_parent,
                       "merge scored below its better parent on the validation subsample"):
            self._validate([child], guess=child, iteration=iteration + 1)
        return True

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
            ran = slot.parent_batch.started + (slot.child_batch.started
                                               if slot.child_batch is not None else 0)
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

    def _later(self, record: Callable[[], None]) -> None:
        """Record a judged iteration's outcome now, or after those still unrecorded."""
        if self._unjudged:
            self._unjudged.append((self._window_start, record))
        else:
            record()

    def _better(self, child_sum: float, parent_sum: float) -> bool:
        return (child_sum > parent_sum if self.config.acceptance == "strict_improvement"
                else child_sum >= parent_sum)

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
            if spec is not None and (spec.iteration, spec.parent.id,
                                     spec.components) == (iteration, parent.id, components):
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
        slot.skip = self.config.skip_perfect_score and all(
            r.score >= self.config.perfect_score for r in rollouts)
        if not slot.skip and slot.child is None and slot.copy_of is None:
            slot.calls = self._start_reflections(slot)
        slot.state = SlotState.REFLECTING

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

    def _propose_slot(self, slot: Slot) -> None:
        """The slot's child (waiting for its reflection replies), and its minibatch started."""
        if not slot.skip and slot.child is None and slot.failure is None:
            slot.child = (self._copy(slot.copy_of, slot.speculative)
                          if slot.copy_of is not None else self._proposal(slot))
        if slot.child is not None and slot.child_batch is None:
            slot.child_batch = self.batches.submit([(slot.child, slot.batch, "minibatch")])

    def _speculate(self, guess: Candidate, iteration: int) -> Slot | None:
        """Plan ``iteration`` as if ``guess`` (being validated) were picked as its
        parent, and start its parent minibatch. None when lookahead is off (GEPA's
        one-at-a-time loop) or the budget cannot cover it as well as the validation
        (its minibatches and one more validation, as a planned iteration needs)."""
        if self.config.lookahead < 2 or not self._guess_holds(guess):
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

    def _rng(self, iteration: int) -> random.Random:
        """The random source of ``iteration``'s choices (the same in every process)."""
        return random.Random(f"gepa-trace:{self.config.seed}:{iteration}")

    def _pick(self, iteration: int, rng: random.Random
              ) -> tuple[list[str], Candidate, list[str]]:
        """What GEPA's loop picks for ``iteration`` from the current state: the
        components to improve, the parent and the minibatch. Planning and running
        ahead both pick through here, so a guess that holds plans the same slot."""
        components = self.select_components(self.components, iteration)
        parent = self.state.candidates[self.select_parent(self.state, components[0], rng)]
        return components, parent, self.sampler.batch(iteration - 1)

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

    def _collect_quietly(self, batches: Iterable[Submitted | None]) -> None:
        """Record what these submissions ran; their results decide nothing any more."""
        for batch in batches:
            if batch is not None:
                with contextlib.suppress(BatchStopped, RolloutFailed):
                    self.batches.collect(batch)

    def _start_reflections(self, slot: Slot) -> list[tuple]:
        """Build the slot's reflection prompts and start their calls."""
        examples = [self.examples[e] for e in slot.batch]
        calls = []
        for component in slot.components:
            current = self.state.versions[(component, slot.parent.prompts[component])]
            prompt = build_prompt(component, current.instruction,
                                  reflection_examples(component, examples, slot.rollouts),
                                  self.config.reflection.max_tokens,
                                  self.config.reflection.templates.get(component))
            calls.append((component, current, prompt, self._start_reflection(prompt)))
        return calls

    def _start_reflection(self, prompt: str) -> object:
        """A future of the reflection reply to ``prompt`` (or the BudgetExhausted that
        refused it), counted as one reflection call."""
        try:
            if getattr(self.reflection_lm, "budget", None) is not self.budget:
                self.budget.start_llm_call("reflection")
        except BudgetExhausted as exc:
            return exc
        roles = self.totals.llm_calls_by_role
        roles["reflection"] = roles.get("reflection", 0) + 1
        return self._reflections.submit(self.reflection_lm, prompt)

    def _proposal(self, slot: Slot) -> Candidate | None:
        """The child built from the replies to the slot's reflection calls (waited for
        here), or None (``slot.failure`` says why; it is recorded when the iteration is
        judged). Any other exception of the reflection LM propagates."""
        state = self.state
        parent, iteration = slot.parent, slot.iteration
        new_versions, diagnoses, meta = [], [], {}
        for component, current, prompt, pending in slot.calls:
            meta[f"reflection_prompt_chars:{component}"] = len(prompt)
            try:
                if isinstance(pending, BudgetExhausted):  # refused before it was sent
                    raise pending
                proposal = parse_reply(pending.result())
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
            slot.failure = ("reflection_reply",
                            "the reflection reply repeats the current instruction")
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
            [self.examples[e] for e in slot.batch]))
        child = Candidate(state.next_id(), prompts, parents=(parent.id,), origin="reflection",
                          component=",".join(slot.components), iteration=iteration,
                          diagnosis="\n\n".join(diagnoses), minibatch=tuple(slot.batch),
                          meta=meta, status="speculative" if slot.speculative else "proposed")
        child.minibatch_parent_sum = slot.parent_sum
        self._propose(child, new_versions)
        return child

    def _proposal_failed(self, iteration: int, parent: Candidate, kind: str,
                         reason: str, ahead: bool = False) -> None:
        """Record a proposal that gave no child. ``ahead``: its iteration was planned
        ahead and never judged (it is planned again, or the run stopped first), so the
        failure is an error but not a verdict on the iteration."""
        self.totals.reflection_errors += 1
        payload = {"iteration": iteration, "parent": parent.id, "kind": kind, "reason": reason}
        if ahead:
            payload["ahead"] = True
        self.recorder.event("proposal_failed", payload)
        self.callbacks.emit(OptimizerErrorEvent(kind, reason, iteration=iteration))
        if not ahead:
            self.callbacks.emit(CandidateRejected(iteration, None, reason))

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

    def _admit(self, candidate: Candidate) -> None:
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

    # ---------------------------------------------------------------- helpers
    def _front(self, component: str):
        return self.state.front(component, self.config.secondary_for(component))

    def _require(self, rollouts: int) -> None:
        """Stop now unless the budget covers ``rollouts`` more (no half candidates)."""
        reason = self.batches.affordable(rollouts)
        if reason:
            raise StopRun(reason)

    def _existing(self, prompts: dict, iteration: int, origin: str) -> Candidate | None:
        """A stored candidate with these prompts, unless it is this iteration's own
        pending proposal (a resumed run redoing its interrupted iteration)."""
        found = self.state.find(prompts)
        if found is None or (found.iteration == iteration and found.origin == origin):
            return None
        return found

    def _pending(self, prompts: dict, iteration: int, origin: str) -> Candidate | None:
        found = self.state.find(prompts)
        if found is not None and found.iteration == iteration and found.origin == origin:
            return found
        return None

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

    def _propose(self, candidate: Candidate, versions: list[PromptVersion]) -> None:
        self.state.add_candidate(candidate)
        self.recorder.save_versions(versions, candidate.id)
        self.recorder.save_candidate(candidate, new=True)
        self.callbacks.emit(CandidateProposed(candidate.iteration, candidate.id,
                                              candidate.origin, candidate.parents,
                                              candidate.component, candidate.diagnosis))

    def _store_rollout(self, candidate: Candidate, example_id: str, purpose: str,
                       rollout: Rollout) -> None:
        self.recorder.save_evaluation(candidate.id, example_id, purpose, rollout)

    def _on_rollout(self, candidate: Candidate, example_id: str, purpose: str,
                    rollout: Rollout) -> None:
        totals = self.totals
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
        # the budget was charged as the rollout ended (BatchEvaluator._run_and_store)

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
            val_grown_by=len(state.val_ids) - self.val_start)

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

