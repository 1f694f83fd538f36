"""Rollouts in worker processes: an Evaluator that runs another one in child processes.

Rollouts on threads of one process share one GIL, so a CPU-heavy agent (LangChain,
tracing, litellm) runs on about one core however many workers there are.
``ProcessEvaluator`` starts ``processes`` children; each builds the real evaluator once
from a picklable ``factory(budget)`` and runs rollouts on threads of its own. The
parent's worker threads only wait for replies, so the engine is unchanged: it sees an
Evaluator, and its results do not depend on where rollouts ran.

- An example always goes to the same child (dealt round robin in order of first
  request, so a batch spreads evenly), so whatever a child caches per input (the replay
  cache) serves every candidate's rollouts of it.
- A child's LLM spend that its own LMs metered (a judge's calls) comes back with each
  reply and is charged to the run's budget.
- Children are started with ``spawn`` (never ``fork``: the parent has threads), ignore
  SIGINT (the parent decides when to stop) and exit when the parent's end of the pipe
  closes, so a killed parent leaves none behind. A child that dies fails its rollouts
  in flight (each a failed rollout, retried by the engine, never a score) and is
  started again.
- An evaluator exception in a child comes back as ``RemoteError``, with whether a
  retry can help (``failures.is_permanent``, judged in the child where the exception's
  type and status code are known).
- Idle children are kept for the next ``ProcessEvaluator`` of this process (importing
  an agent's libraries takes seconds); they are stopped at exit.
"""

from __future__ import annotations

import atexit
import gc
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Self

from gepa_trace.errors import ConfigError
from gepa_trace.lm.budget import Budget, Spent
from gepa_trace.optimizer.protocols import Evaluator, Example, Rollout, RolloutContext
from gepa_trace.prompts import PromptSet

EvaluatorFactory = Callable[[Budget], Evaluator]
log = logging.getLogger(__name__)


class WorkerDied(RuntimeError):
    """A worker process exited while rollouts were running in it."""


class RemoteError(RuntimeError):
    """An exception raised in a worker process: its last line (``ValueError: ...``) as
    the message, the child's whole traceback in ``traceback``; ``permanent``: a retry
    would fail the same way (auth, not found, a metric contract)."""

    def __init__(self, traceback_text: str, permanent: bool = False):
        lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
        super().__init__(lines[-1].strip() if lines else "unknown error in a worker process")
        self.traceback = traceback_text
        self.permanent = permanent


# ----------------------------------------------------------------------------- child

def _delta(budget: Budget | None, reported: Spent, lock: threading.Lock) -> dict | None:
    """What ``budget`` spent since the last report (None when nothing)."""
    if budget is None:
        return None
    with lock:
        now = budget.spent()
        roles = {role: n - reported.llm_calls_by_role.get(role, 0)
                 for role, n in now.llm_calls_by_role.items()
                 if n != reported.llm_calls_by_role.get(role, 0)}
        tokens, cost = now.tokens - reported.tokens, now.cost_usd - reported.cost_usd
        if not roles and not tokens and not cost:
            return None
        reported.llm_calls_by_role = dict(now.llm_calls_by_role)
        reported.tokens, reported.cost_usd = now.tokens, now.cost_usd
    return {"llm_calls_by_role": roles, "tokens": tokens, "cost_usd": cost}


def _child_main(conn: Any) -> None:
    """A worker process: setup / eval / close requests, replies in any order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send_lock = threading.Lock()
    spend_lock = threading.Lock()
    evaluator: Any = None
    budget: Budget | None = None
    reported = Spent()
    pool: ThreadPoolExecutor | None = None

    def reply(req: int, ok: bool, payload: Any) -> None:
        message = (req, ok, payload, _delta(budget, reported, spend_lock))
        with send_lock:
            try:
                conn.send(message)
            except (OSError, EOFError):  # the parent is gone
                os._exit(0)
            except Exception:  # noqa: BLE001 - not picklable: keep what the engine needs
                if isinstance(payload, Rollout):
                    payload.output = repr(payload.output)
                    conn.send((req, ok, payload, message[3]))
                else:
                    conn.send((req, False, f"unpicklable reply: {payload!r}", message[3]))

    def run(req: int, prompts: PromptSet, example: Example, context: RolloutContext) -> None:
        try:
            reply(req, True, evaluator.evaluate(prompts, example, context))
        except BaseException as exc:  # noqa: BLE001 - the parent turns it into a failed rollout
            from gepa_trace.optimizer.failures import is_permanent

            reply(req, False, (_describe(exc), is_permanent(exc)))

    while True:
        try:
            req, kind, args = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if kind == "exit":
            break
        if kind == "setup":
            factory, threads = args
            try:
                budget, reported = Budget(), Spent()
                evaluator = factory(budget)
                # The agent's libraries are half a million objects that live as long as
                # the process: out of the collector's way, a full collection no longer
                # stops every rollout of this process for a third of a second.
                gc.freeze()
                pool = ThreadPoolExecutor(max_workers=threads,
                                          thread_name_prefix="gepa-rollout")
                reply(req, True, os.getpid())
            except BaseException as exc:  # noqa: BLE001 - any failure goes back to the parent
                reply(req, False, _describe(exc))
        elif kind == "eval":
            if pool is None:
                reply(req, False, "the worker was not set up")
                continue
            pool.submit(run, req, *args)
        elif kind == "close":
            try:
                if pool is not None:  # every rollout replies before the close does
                    pool.shutdown(wait=True)
                close = getattr(evaluator, "close", None)
                reply(req, True, close() if close is not None else None)
            except BaseException as exc:  # noqa: BLE001 - any failure goes back to the parent
                reply(req, False, _describe(exc))
            evaluator, pool, budget = None, None, None
            gc.unfreeze()  # what the run left behind can be collected again
    os._exit(0)


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).strip()


# ---------------------------------------------------------------------------- parent

class _Worker:
    """One child process and the thread that reads its replies."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_child_main, args=(child_conn,), daemon=True,
                                   name="gepa-trace-rollouts")
        self.process.start()
        child_conn.close()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self.on_spend: Callable[[dict], None] | None = None
        self.dead = False
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name="gepa-trace-rollout-replies")
        self._reader.start()

    def call(self, kind: str, args: Any = None) -> Future:
        future: Future = Future()
        with self._lock:
            if self.dead:
                future.set_exception(WorkerDied(self._death()))
                return future
            req = next(self._ids)
            self._pending[req] = future
            try:
                self.conn.send((req, kind, args))
            except (OSError, EOFError):
                self._pending.pop(req, None)
                future.set_exception(WorkerDied(self._death()))
        return future

    def _death(self) -> str:
        self.process.join(timeout=0.5)
        code = self.process.exitcode
        return (f"the rollout worker process {self.process.pid} exited"
                + (f" with code {code}" if code is not None else ""))

    def _read(self) -> None:
        while True:
            try:
                req, ok, payload, spend = self.conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # noqa: BLE001 - a reply that does not unpickle here
                req, ok, payload, spend = None, False, _describe(exc), None
            if spend and self.on_spend is not None:
                self.on_spend(spend)
            with self._lock:
                future = self._pending.pop(req, None)
            if future is None:
                continue
            if ok:
                future.set_result(payload)
            else:
                future.set_exception(RemoteError(*payload) if isinstance(payload, tuple)
                                     else RemoteError(payload))
        with self._lock:
            self.dead = True
            pending, self._pending = self._pending, {}
        if pending:
            reason = self._death()
            for future in pending.values():
                future.set_exception(WorkerDied(reason))

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            if not self.dead:
                try:
                    self.conn.send((0, "exit", None))
                except (OSError, EOFError):
                    pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.conn.close()


_idle: list[_Worker] = []
_idle_lock = threading.Lock()
_atexit_registered = False


def _take_workers(n: int) -> list[_Worker]:
    global _atexit_registered
    with _idle_lock:
        if not _atexit_registered:
            atexit.register(stop_idle_workers)
            _atexit_registered = True
        taken = []
        while _idle and len(taken) < n:
            worker = _idle.pop()
            if not worker.dead and worker.process.is_alive():
                taken.append(worker)
    return taken + [_Worker() for _ in range(n - len(taken))]


def stop_idle_workers() -> None:
    """Stop the worker processes kept for reuse (also done at exit)."""
    with _idle_lock:
        workers, _idle[:] = list(_idle), []
    for worker in workers:
        worker.stop()


class ProcessEvaluator:
    """An Evaluator whose rollouts run in ``processes`` worker processes, each with
    ``threads`` rollouts at once, on the evaluator ``factory(budget)`` builds there.

    ``factory`` must pickle (a module-level function or class instance); ``budget``
    (the run's) is charged what the children's own LMs spend. Use as a context manager
    or call ``close()``, which returns each child's ``evaluator.close()`` result.
    """

    def __init__(self, factory: EvaluatorFactory, *, processes: int, threads: int,
                 budget: Budget | None = None):
        if not isinstance(processes, int) or processes < 1:
            raise ConfigError(f"processes must be an integer >= 1, got {processes!r}")
        self.factory = factory
        self.threads = max(1, int(threads))
        self.budget = budget
        self._lock = threading.Lock()
        self._closed = False
        self._home: dict[str, int] = {}  # example id -> the child that runs it
        try:
            pickle.dumps(factory)
        except Exception as exc:  # noqa: BLE001 - pickling fails in many ways
            raise ConfigError(f"rollouts in worker processes need a factory that can be "
                              f"pickled (a module-level function, a 'module:function' "
                              f"entry point): {exc}") from None
        self.workers = _take_workers(processes)
        self._replacing = [threading.Lock() for _ in self.workers]
        try:
            for future in [self._setup(w) for w in self.workers]:
                future.result()
        except RemoteError as exc:
            self._discard()
            log.debug("worker process setup failed:\n%s", exc.traceback)
            raise ConfigError(f"a rollout worker process could not build the evaluator: "
                              f"{exc}") from None

    def _setup(self, worker: _Worker) -> Future:
        worker.on_spend = self._charge
        return worker.call("setup", (self.factory, self.threads))

    def _charge(self, spend: dict) -> None:
        if self.budget is not None:
            self.budget.add_spent(spend["llm_calls_by_role"], spend["tokens"],
                                  spend["cost_usd"])

    def _worker_for(self, example: Example) -> _Worker:
        with self._lock:
            index = self._home.get(example.id)
            if index is None:  # in order of first sight: examples evaluated together
                index = self._home[example.id] = len(self._home) % len(self.workers)
        with self._replacing[index]:  # the other children keep serving meanwhile
            worker = self.workers[index]
            if worker.dead and not self._closed:  # start a new one in its place
                worker.stop(timeout=1.0)
                worker = self.workers[index] = _Worker()
                self._setup(worker).result()
        return worker

    def evaluate(self, prompts: PromptSet, example: Example,
                 context: RolloutContext) -> Rollout:
        return self._worker_for(example).call("eval", (prompts, example, context)).result()

    def close(self) -> list[Any]:
        """Wait for the children's rollouts, close their evaluators (flushing what they
        recorded) and keep the children for reuse. Idempotent."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
        futures = [(w, w.call("close")) for w in self.workers]
        stats, healthy = [], []
        for worker, future in futures:
            try:
                stats.append(future.result())
                healthy.append(worker)
            except (RemoteError, WorkerDied):
                worker.stop(timeout=1.0)
        for worker in healthy:
            worker.on_spend = None
        with _idle_lock:
            _idle.extend(healthy)
        return stats

    def _discard(self) -> None:
        self._closed = True
        for worker in self.workers:
            worker.stop(timeout=2.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
