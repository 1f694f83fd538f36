"""The GEPA loop.

Each iteration: (after an accepted reflection child, possibly a merge instead) pick the
component(s) to improve, pick a parent from that component's Pareto front, run the
parent on the next training minibatch, skip it if already perfect, ask the reflection
LM for a diagnosis and a new instruction, run the child on the same minibatch, accept it
only if it does better there, then score it on the validation set and update the fronts.

How it is split: the GEPA decisions, in the loop's order, are ``optimizer.planner``'s;
``optimizer.scheduler`` runs them in windows of up to ``lookahead`` iterations on a
thread pool, and ``optimizer.speculation`` runs iterations ahead on a guess (that an
accepted child is the next parent, or that a window's children are all rejected) and
drops what a wrong guess ran. ``optimizer.halting`` decides when the run stops and
``optimizer.bookkeeping`` keeps its totals, checkpoints and result. This module holds
the run itself: setup, resume, the loop over iterations and merges, and what a failed
rollout stops.

Reproducibility: all randomness comes from ``random.Random`` objects seeded by the run's
seed and the iteration number, consumed on the main thread in a fixed order; rollouts
run on a thread pool but their results are recorded in a fixed order. So the same seed
gives the same run at any ``workers``, and a resumed run redoes its interrupted
iteration with the same choices, reusing everything stored.

Stopping (``optimizer.halting``): checked at safe points; the run then returns a result.

Failed rollouts (``optimizer.failures``): a rollout that still fails after its retries
is never a score. The first decision that needs one is not taken: the run stops there
(``OptimizationResult.failed_with``, status "failed"), keeps everything recorded, and
goes back to the start of that decision's window, so ``resume`` plans that window again
with the same choices once the failure is gone, and ends as a run that never failed
would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from gepa_trace.errors import ConfigError
from gepa_trace.lm.budget import Budget, Spent
from gepa_trace.optimizer import provenance
from gepa_trace.optimizer.bookkeeping import Bookkeeping
from gepa_trace.optimizer.config import OptimizerConfig
from gepa_trace.optimizer.events import (
    Callbacks,
    RunStopped,
)
from gepa_trace.optimizer.failures import RolloutFailed, reopen_window
from gepa_trace.optimizer.halting import Halting
from gepa_trace.optimizer.lock import RunLock
from gepa_trace.optimizer.persistence import RunRecorder, StoredRun, load_run
from gepa_trace.optimizer.planner import GepaPlanner
from gepa_trace.optimizer.protocols import Evaluator, Example, RecordedEvidence, ReflectionLM
from gepa_trace.optimizer.result import HistoryPoint, OptimizationResult, Totals
from gepa_trace.optimizer.rollouts import BatchEvaluator, BatchStopped
from gepa_trace.optimizer.sampler import EpochSampler
from gepa_trace.optimizer.scheduler import WindowScheduler
from gepa_trace.optimizer.selection import candidate_selector, component_selector
from gepa_trace.optimizer.slots import Slot
from gepa_trace.optimizer.speculation import Speculation
from gepa_trace.optimizer.state import Candidate, RunState
from gepa_trace.optimizer.stopping import SignalWatch, StopRun
from gepa_trace.optimizer.warmstart import warm_start_candidates
from gepa_trace.prompts import PromptSet
from gepa_trace.store.engine import Store


class Optimizer(GepaPlanner, WindowScheduler, Speculation, Halting, Bookkeeping):
    """One optimization run of one agent.

    ``evaluator`` runs a candidate's prompts on one example; ``reflection_lm`` maps a
    prompt to a reply (a ``gepa_trace.lm.LM`` whose ``budget`` is this run's budget
    meters itself; any other callable is metered here, as role "reflection").
    ``store`` (optional) receives every step as it happens; ``resume`` continues a
    stored run. ``run()`` returns an ``OptimizationResult`` however the run stops (one
    stopped by rollouts that kept failing has ``failed_with`` set and can be resumed);
    it raises only for errors of the setup (``ConfigError``, ``LockHeld``) and a store
    that stays unwritable (``StoreError``).

    Its parts, one module each, share this object's run state: ``GepaPlanner`` (the
    decisions of GEPA's loop), ``WindowScheduler`` (windows of iterations on the pool),
    ``Speculation`` (iterations run ahead on a guess), ``Halting`` (when to stop) and
    ``Bookkeeping`` (totals, checkpoints, the result).
    """

    def __init__(self, evaluator: Evaluator, reflection_lm: ReflectionLM,
                 seed_prompts: PromptSet, train: Sequence[Example], val: Sequence[Example],
                 budget: Budget, store: Store | None = None, agent: str | None = None,
                 config: OptimizerConfig | None = None, callbacks: Iterable[object] = (),
                 run_id: str | None = None, recorded: RecordedEvidence | None = None):
        self.config = (config or OptimizerConfig()).validate().for_budget(budget.max_rollouts)
        if not isinstance(seed_prompts, PromptSet) or len(seed_prompts) == 0:
            raise ConfigError("seed_prompts must be a non-empty PromptSet")
        if not val:
            raise ConfigError("the optimizer needs at least one validation example")
        for name, examples in (("train", train), ("val", val)):
            ids = [e.id for e in examples]
            if len(set(ids)) != len(ids):
                raise ConfigError(f"{name} examples have duplicate ids")
        self.evaluator = evaluator
        self.recorded = recorded
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

    @classmethod
    def resume(cls, run_id: str, *, evaluator: Evaluator, reflection_lm: ReflectionLM,
               train: Sequence[Example], val: Sequence[Example], budget: Budget,
               store: Store, callbacks: Iterable[object] = (),
               config: OptimizerConfig | None = None,
               recorded: RecordedEvidence | None = None) -> Optimizer:
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
                  callbacks=callbacks, run_id=run_id, recorded=recorded)
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
        # a recorded production run read as a rollout kept the run's own trace
        usable = [(c, e, dataclasses.replace(r, recorded=True)
                   if e in self.examples and r.trace_id is not None
                   and r.trace_id == self.examples[e].trace_id else r)
                  for c, e, r in usable]
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
        rollouts = [r for _c, _e, r in usable if not r.recorded]
        totals.rollouts = len(rollouts)
        totals.recorded_rollouts = len(usable) - len(rollouts)
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
                                          retries=self.config.rollout_retries,
                                          recorded=self.recorded)
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

    def _merge(self, iteration: int, rng: random.Random) -> bool:
        """Try a merge (the planner's step 8); False when no pair qualifies (the
        iteration then reflects)."""
        plan = self._merge_plan(iteration, rng)
        if plan is None:
            return False
        self._settle()
        self._drop_spec("a merge took the iteration")
        child, subsample = self._merge_child(plan, iteration, rng)
        self._require(len(self.batches.missing(child, subsample + self.state.val_ids)))
        rollouts = self.batches.evaluate(child, subsample, "merge")
        if self._judge_merge(child, plan, iteration, subsample, rollouts):
            self._validate([child], guess=child, iteration=iteration + 1)
        return True
