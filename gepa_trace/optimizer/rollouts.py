"""Evaluating candidates on lists of examples: the cache, the budget, the thread pool.

``BatchEvaluator.submit`` (main thread) starts the rollouts of one or more (candidate,
examples) requests and returns at once; ``collect`` waits for them. A (prompts, example)
pair already evaluated, or still running for an earlier submission, is never started
again. One rollout of the budget is reserved per new pair *before* it starts, so the
rollout limit is never overshot, not even by the rollouts in flight; a pair whose
example's recorded production run carried exactly the candidate's prompts is read from
that record instead (``RecordedEvidence``) and reserves nothing. Results are
recorded in request and example order, never completion order — so results, ids and
events do not depend on ``workers``. ``evaluate`` is submit-then-collect. ``peek`` and
``score_bounds`` read results as they come in, recording nothing, for decisions that
need not wait for the recording order.

A rollout that fails (the evaluator raised, returned ``Rollout.error``, or a score
outside the score range) is retried on its reservation and, if it still fails, is never
recorded as a score: ``collect`` reports it and raises ``RolloutFailed`` after recording
the rest (the policy: ``optimizer.failures``). ``BudgetExhausted`` (from the
reservation, or raised by an LLM call inside the evaluator) stops the batch: what
finished is recorded, and ``BatchStopped`` is raised.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future
from concurrent.futures import wait as wait_for_any
from dataclasses import dataclass
from typing import Any

from gepa_trace.errors import BudgetExhausted, StoreError
from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer.failures import (
    RolloutFailed,
    failed_rollout,
    out_of_range,
    retry_pause_s,
)
from gepa_trace.optimizer.protocols import (
    Evaluator,
    Example,
    RecordedEvidence,
    Rollout,
    RolloutContext,
)
from gepa_trace.optimizer.state import Candidate, RunState
from gepa_trace.prompts import PromptSet


class BatchStopped(Exception):
    """A batch could not be completed; ``reason`` says which limit stopped it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Exhausted:
    reason: str


class BuiltOnce:
    """What an evaluator builds per candidate (its agent), built once per key and kept
    for the ``keep`` most recently used keys. Rollouts of a new candidate start
    together (a validation starts dozens): the first one builds and the others wait
    for it instead of each building its own. A failed build fails those waiting for
    it alike, and the next request tries again."""

    def __init__(self, build: Callable[[Any], Any], keep: int):
        self.build = build
        self.keep = keep
        self._lock = threading.Lock()
        self._built: OrderedDict[Hashable, Future] = OrderedDict()

    def get(self, key: Hashable, *args: Any, **kwargs: Any) -> Any:
        """``build(*args, **kwargs)`` for ``key``, built at most once while kept."""
        with self._lock:
            built = self._built.get(key)
            mine = built is None
            if mine:
                built = self._built[key] = Future()
                while len(self._built) > self.keep:
                    self._built.popitem(last=False)
            else:
                self._built.move_to_end(key)
        if not mine:
            return built.result()
        try:
            value = self.build(*args, **kwargs)
        except BaseException as exc:
            with self._lock:
                if self._built.get(key) is built:
                    del self._built[key]
            built.set_exception(exc)
            raise
        built.set_result(value)
        return value


def run_one(evaluator: Evaluator, prompts: PromptSet, example: Example,
            context: RolloutContext) -> Rollout | _Exhausted:
    """One attempt of one rollout; never raises (worker threads must not lose an
    example). An exception becomes a failed Rollout (``error`` set), never a score."""
    try:
        rollout = evaluator.evaluate(prompts, example, context)
    except BudgetExhausted as exc:
        return _Exhausted(str(exc))
    except Exception as exc:  # noqa: BLE001 - one example's failure: an error, not a 0
        return failed_rollout(exc)
    if not isinstance(rollout, Rollout):
        return Rollout(score=0.0, error=f"the evaluator returned {type(rollout).__name__}, "
                                        "not a Rollout", permanent=True)
    return rollout


def settle(budget: Budget, outcome: Rollout | _Exhausted | None) -> None:
    """End a started rollout's hold on ``budget``, charging what its own calls spent
    (failed attempts included) unless an LM that meters the budget counted them."""
    if not isinstance(outcome, Rollout):
        budget.settle_rollout(measured=False)
    elif outcome.metered:
        budget.settle_rollout()
    else:
        budget.settle_rollout(outcome.llm_calls, outcome.tokens, outcome.cost_usd)


def run_with_retries(evaluator: Evaluator, prompts: PromptSet, example: Example,
                     context: RolloutContext, retries: int,
                     score_range: tuple[float, float]) -> Rollout | _Exhausted:
    """A rollout, run again up to ``retries`` more times while it fails (unless its
    failure is permanent). Returns the first good one or the last failure, with
    ``attempts`` set; what the failed attempts cost is added to it, since it was spent."""
    spent_calls = spent_tokens = 0
    spent_cost = 0.0
    attempt = 0
    while True:
        attempt += 1
        outcome = run_one(evaluator, prompts, example, context)
        if isinstance(outcome, _Exhausted):
            return outcome
        if not outcome.error:
            outcome = out_of_range(outcome, *score_range)
        if not outcome.error or outcome.permanent or attempt > retries:
            return dataclasses.replace(
                outcome, attempts=attempt, llm_calls=outcome.llm_calls + spent_calls,
                tokens=outcome.tokens + spent_tokens, cost_usd=outcome.cost_usd + spent_cost)
        spent_calls += outcome.llm_calls
        spent_tokens += outcome.tokens
        spent_cost += outcome.cost_usd
        time.sleep(retry_pause_s(attempt))


class BatchEvaluator:
    """Runs batches for one run. For each new rollout that succeeded (after its
    ``retries``): ``on_stored(candidate, example_id, purpose, rollout)`` on the worker
    thread as it completes (it must be thread-safe), then ``on_result(...)`` on the
    main thread in example order. For one that still failed: ``on_failed(...)`` on the
    main thread, once, when a collect first meets it. A score outside ``score_range``
    is a failure, so ``score_bounds`` holds."""

    def __init__(self, evaluator: Evaluator, state: RunState, budget: Budget,
                 executor: Executor, examples: Mapping[str, Example], run_id: str,
                 agent: str | None,
                 on_stored: Callable[[Candidate, str, str, Rollout], None],
                 on_result: Callable[[Candidate, str, str, Rollout], None],
                 on_cache_hit: Callable[[], None],
                 score_range: tuple[float, float] = (0.0, 1.0),
                 on_failed: Callable[[Candidate, str, str, Rollout], None] | None = None,
                 retries: int = 0, recorded: RecordedEvidence | None = None):
        self.evaluator = evaluator
        self.recorded = recorded
        self.score_range = score_range
        self.on_failed = on_failed or (lambda *_args: None)
        self.retries = retries
        self._reported: set[Future] = set()  # failed rollouts already given to on_failed
        self.state = state
        self.budget = budget
        self.executor = executor
        self.examples = examples
        self.run_id = run_id
        self.agent = agent
        self.on_stored = on_stored
        self.on_result = on_result
        self.on_cache_hit = on_cache_hit
        self._running: dict[tuple[str, str], Future] = {}  # pairs started, not collected
        self._outstanding: list[Submitted] = []

    def missing(self, candidate: Candidate, example_ids: Sequence[str]) -> list[str]:
        """The example ids of ``example_ids`` whose rollout would take one of the budget:
        not yet evaluated with these prompts, not running (a running pair has its
        rollout of the budget already) and not read from a recorded run."""
        seen: set[str] = set()
        out = []
        prompts = None
        for example_id in example_ids:
            if (example_id not in seen and self.state.cached(candidate, example_id) is None
                    and (candidate.key, example_id) not in self._running):
                if self.recorded is not None and prompts is None:
                    prompts = self.state.prompt_set(candidate, self.agent)
                if prompts is None or not self.covered(prompts, example_id):
                    out.append(example_id)
            seen.add(example_id)
        return out

    def affordable(self, rollouts_needed: int) -> str | None:
        """Why ``rollouts_needed`` more rollouts cannot be spent, or None if they can."""
        reason = self.budget.exhausted()
        if reason:
            return reason
        remaining = self.budget.remaining_rollouts()
        if remaining is not None and remaining < rollouts_needed:
            return (f"max_rollouts={self.budget.max_rollouts}: {remaining} rollouts left, "
                    f"the next step needs {rollouts_needed}")
        return None

    def _run_and_store(self, candidate: Candidate, prompts: PromptSet, example_id: str,
                       context: RolloutContext) -> Rollout | _Exhausted:
        outcome: Rollout | _Exhausted | None = None
        try:
            outcome = run_with_retries(self.evaluator, prompts, self.examples[example_id],
                                       context, self.retries, self.score_range)
        finally:
            settle(self.budget, outcome)  # as it ends: see lm/budget.py
        if not isinstance(outcome, _Exhausted) and not outcome.error:
            try:
                self.on_stored(candidate, example_id, context.purpose, outcome)
            except StoreError as exc:
                # unsaved, it would be lost to a resumed run: a failure (retrying the
                # agent would not help; the write was retried), so the run stops at the
                # decision that needs it, with this error
                outcome = dataclasses.replace(
                    outcome, error=f"the evaluation could not be stored: {exc}",
                    permanent=True)
        return outcome

    def covered(self, prompts: PromptSet, example_id: str) -> bool:
        """The example's recorded run carried exactly these prompts: its rollout is read
        from the record and costs no rollout of the budget (``RecordedEvidence``)."""
        return self.recorded is not None and self.recorded.covers(prompts,
                                                                  self.examples[example_id])

    def _read_and_store(self, candidate: Candidate, prompts: PromptSet, example_id: str,
                        context: RolloutContext) -> Rollout | _Exhausted:
        """A covered pair: the recorded run, scored; run live (on a rollout of the budget
        taken now) when it cannot be read after all."""
        try:
            rollout = self.recorded.rollout(prompts, self.examples[example_id], context)
        except Exception:  # noqa: BLE001 - the live rollout will meet any real error
            rollout = None
        if rollout is None or rollout.error:
            try:
                self.budget.start_rollout()
            except BudgetExhausted as exc:
                return _Exhausted(str(exc))
            return self._run_and_store(candidate, prompts, example_id, context)
        rollout = dataclasses.replace(rollout, recorded=True)
        try:
            self.on_stored(candidate, example_id, context.purpose, rollout)
        except StoreError as exc:
            return dataclasses.replace(rollout, error=f"the evaluation could not be "
                                                      f"stored: {exc}", permanent=True)
        return rollout

    def evaluate(self, candidate: Candidate, example_ids: Sequence[str],
                 purpose: str) -> list[Rollout]:
        """The candidate's rollouts on ``example_ids``, in that order.

        Raises BatchStopped (after recording what finished) when the budget cannot
        cover the batch or runs out during it, RolloutFailed when a rollout failed.
        """
        return self.evaluate_many([(candidate, example_ids, purpose)])[0]

    def evaluate_many(self, requests: Sequence[tuple[Candidate, Sequence[str], str]]
                      ) -> list[list[Rollout]]:
        """Several (candidate, example ids, purpose) batches at once, on one pool."""
        return self.collect(self.submit(requests))

    def submit(self, requests: Sequence[tuple[Candidate, Sequence[str], str]]) -> Submitted:
        """Start the rollouts of several (candidate, example ids, purpose) batches and
        return at once; ``collect`` waits for them. A pair already evaluated, asked
        twice, or still running for an earlier submission runs once. One rollout of
        the budget is reserved per new pair before it starts; raises BatchStopped
        (starting nothing) when the budget cannot cover them all."""
        todo: list[tuple[Candidate, str, str]] = []
        shared: list[tuple[Candidate, str, str, Future]] = []
        queued: set[tuple[str, str]] = set()
        for candidate, example_ids, purpose in requests:
            for example_id in example_ids:
                pair = (candidate.key, example_id)
                if pair in queued or self.state.cached(candidate, example_id) is not None:
                    self.on_cache_hit()
                elif pair in self._running:
                    self.on_cache_hit()
                    shared.append((candidate, example_id, purpose, self._running[pair]))
                else:
                    todo.append((candidate, example_id, purpose))
                queued.add(pair)
        prompt_sets: dict[int, PromptSet] = {}
        for candidate, _e, _p in todo:
            if candidate.id not in prompt_sets:
                prompt_sets[candidate.id] = self.state.prompt_set(candidate, self.agent)
        free = {(c.key, e) for c, e, _p in todo if self.covered(prompt_sets[c.id], e)}
        reason = self.affordable(len(todo) - len(free))
        if reason:
            raise BatchStopped(reason)
        submitted = Submitted([(c, list(ids), p) for c, ids, p in requests], shared)
        for candidate, example_id, purpose in todo:
            recorded = (candidate.key, example_id) in free
            if not recorded:
                try:
                    self.budget.start_rollout()
                except BudgetExhausted as exc:
                    submitted.stop = str(exc)
                    break
            context = RolloutContext(self.run_id, candidate.id, purpose, self.score_range)
            run = self._read_and_store if recorded else self._run_and_store
            future = self.executor.submit(run, candidate, prompt_sets[candidate.id],
                                          example_id, context)
            self._running[(candidate.key, example_id)] = future
            submitted.futures.append((candidate, example_id, purpose, future))
            if recorded:
                submitted.read += 1
            else:
                submitted.started += 1
        self._outstanding.append(submitted)
        return submitted

    def collect(self, submitted: Submitted) -> list[list[Rollout]]:
        """Wait for a submission and record its results in request order, then example
        order (never completion order): each pair once, by whichever collect comes
        first. A failed rollout is reported (``on_failed``) and never recorded: a pair
        asked again after this collect runs again. Raises, after recording what
        finished, RolloutFailed (the first failure, in that order) when a rollout
        failed, else BatchStopped when the budget ran out during it."""
        stop = submitted.stop
        failure: RolloutFailed | None = None
        for candidate, example_id, purpose, future in submitted.futures:
            outcome = future.result()
            self._running.pop((candidate.key, example_id), None)
            if isinstance(outcome, _Exhausted):
                stop = stop or outcome.reason
            elif outcome.error:
                if future not in self._reported:
                    self._reported.add(future)
                    self.on_failed(candidate, example_id, purpose, outcome)
                failure = failure or RolloutFailed(candidate.id, example_id, outcome.error)
            elif self.state.cached(candidate, example_id) is None:
                self.state.remember(candidate, example_id, outcome)
                self.on_result(candidate, example_id, purpose, outcome)
        if submitted in self._outstanding:
            self._outstanding.remove(submitted)
        if failure is not None:
            raise failure
        if stop:
            raise BatchStopped(stop)
        return [[self.state.cached(candidate, example_id) for example_id in example_ids]
                for candidate, example_ids, _purpose in submitted.requests]

    def _outcomes(self, submitted: Submitted) -> list[list[Rollout | Future | None]]:
        """Per request and example of a submission: its rollout if it is in (recorded
        or not; a failed one too, ``error`` set), its future if still running, None if
        it cannot finish (never started, or stopped by the budget)."""
        futures = {(c.key, e): f for c, e, _p, f in submitted.futures}
        out = []
        for candidate, example_ids, _purpose in submitted.requests:
            row: list[Rollout | Future | None] = []
            for example_id in example_ids:
                known: Rollout | Future | None = self.state.cached(candidate, example_id)
                if known is None:
                    known = futures.get((candidate.key, example_id))
                    if known is not None and known.done():
                        outcome = known.result()
                        known = None if isinstance(outcome, _Exhausted) else outcome
                row.append(known)
            out.append(row)
        return out

    def peek(self, submitted: Submitted) -> list[list[Rollout]] | None:
        """What ``collect`` would return if every rollout of the submission is in (and
        none was stopped or failed), without recording anything; else None."""
        if submitted.stop:
            return None
        rows = self._outcomes(submitted)
        if all(isinstance(known, Rollout) and not known.error for row in rows for known in row):
            return rows
        return None

    @staticmethod
    def running(submitted: Submitted) -> list[Future]:
        """The submission's rollouts not finished yet."""
        return [f for _c, _e, _p, f in submitted.futures if not f.done()]

    def wait(self, submitted: Submitted,
             wake: Callable[[], list[Future]] = list) -> None:
        """Wait until every rollout of the submission is in; ``wake()`` is called first
        and again whenever one of the futures it returned, or a rollout, finishes."""
        while True:
            extra = wake()
            running = self.running(submitted)
            if not running:
                return
            wait_for_any(running + extra, return_when=FIRST_COMPLETED)

    def score_bounds(self, submitted: Submitted, wake: Callable[[], list[Future]] = list
                     ) -> Iterator[tuple[float, float] | None]:
        """Bounds (low, high) of the sum of the scores of a one-request submission, in
        example order, yielded again each time one of its rollouts finishes (it waits
        for that); the last ones are exact (low == high). Each rollout still running
        counts as the bottom of ``score_range`` in ``low`` and the top in ``high``
        (float addition is monotone, so the final sum lies between them), and so does
        one that failed, which is not waited for: the bounds then end apart unless the
        others fix the verdict, and whether they do does not depend on timing. Yields
        None and ends when a rollout could not finish (``collect`` then raises
        BatchStopped). Records nothing: ``collect`` does, later. ``wake`` as in ``wait``."""
        low_score, high_score = self.score_range
        while True:
            (row,) = self._outcomes(submitted)
            if any(known is None for known in row):
                yield None
                return
            low = high = 0.0
            running = []
            for known in row:  # in example order, as ``collect``'s sum adds them
                if isinstance(known, Future) or known.error:
                    low, high = low + low_score, high + high_score
                    if isinstance(known, Future):
                        running.append(known)
                else:
                    low, high = low + known.score, high + known.score
            yield low, high
            if not running:
                return
            wait_for_any(running + wake(), return_when=FIRST_COMPLETED)

    def drain(self) -> None:
        """Wait for every submission not yet collected and record what it ran (a run
        that stops in the middle of a round still accounts for all it spent)."""
        while self._outstanding:
            try:
                self.collect(self._outstanding[0])
            except (BatchStopped, RolloutFailed):
                pass


@dataclass
class Submitted:
    """Rollouts started by one ``BatchEvaluator.submit``: the requests, the futures
    (including those shared with an earlier submission), ``started`` (new pairs run on a
    rollout of the budget each), ``read`` (new pairs read from recorded runs)."""

    requests: list[tuple[Candidate, list[str], str]]
    futures: list[tuple[Candidate, str, str, Future]]
    started: int = 0
    read: int = 0
    stop: str | None = None
