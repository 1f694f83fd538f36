"""Agent replay in worker processes (``ReplaySettings.processes``, ``--processes``).

``ReplayWorker`` is what a worker process builds its evaluator from: the store, the
agent's entry point and metric (by name, or module-level callables), the task and judge
models, and whether the replay cache is on. Each child records its rollouts' spans into
the same store as the parent (SQLite in WAL mode, or PostgreSQL) and keeps its own
replay cache; since an example always goes to the same child, the cache serves all of
that example's rollouts as it would in one process.

A child imports ``module:function`` entry points and metrics from ``app_dir`` first,
as the parent does (spawned children do not inherit the parent's later ``sys.path``
changes reliably, since idle children are reused across runs), and checks the metric
contract with the same ``score_range``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer.protocols import Example, Rollout, RolloutContext
from gepa_trace.prompts import PromptSet


@dataclass(frozen=True)
class ReplayWorker:
    """A picklable recipe for ``AgentReplay`` in a worker process."""

    store_url: str
    agent: str
    entrypoint: str | Callable[[PromptSet], Any]
    metric: str | Callable = "feedback"
    task_lm: str | None = None
    judge_lm: str | None = None
    rubric: str | None = None
    replay_cache: bool = True
    app_dir: str | None = None  # absolute; None: the child's working directory
    task_lm_base: str | None = None
    judge_lm_base: str | None = None
    score_range: tuple[float, float] = (0.0, 1.0)
    trace_ids: tuple[str, ...] | None = None  # the examples' traces: what the cache loads

    def __call__(self, budget: Budget) -> _ChildReplay:
        from gepa_trace.collectors.instrument import instrument
        from gepa_trace.replay import preflight
        from gepa_trace.replay.cache import ReplayCache
        from gepa_trace.replay.harness import AgentReplay
        from gepa_trace.replay.optimize import _as_lm, _builder, checked_metric, load_entrypoint
        from gepa_trace.store import open_store

        preflight.put_on_path(self.app_dir)
        store = open_store(self.store_url)
        judge = _as_lm(self.judge_lm or self.task_lm, budget, "judge",
                       self.judge_lm_base if self.judge_lm else self.task_lm_base)
        metric = checked_metric(self.metric, judge, self.rubric, self.app_dir,
                                self.score_range)
        build = _builder(load_entrypoint(self.entrypoint, self.app_dir), self.task_lm,
                         self.task_lm_base)
        cache = (ReplayCache.from_store(store, self.agent, self.trace_ids)
                 if self.replay_cache else None)
        inst = instrument(store=store, service_name=self.agent)
        return _ChildReplay(AgentReplay(build, metric, agent=self.agent, instrumentation=inst,
                                        cache=cache), inst, cache, store.url)


class _ChildReplay:
    """The evaluator a worker process runs; ``close`` flushes its spans to the store,
    closes its connections and reports its replay cache's counts."""

    def __init__(self, replay: Any, inst: Any, cache: Any, store_url: str):
        self.replay, self.inst, self.cache, self.store_url = replay, inst, cache, store_url

    def evaluate(self, prompts: PromptSet, example: Example,
                 context: RolloutContext) -> Rollout:
        return self.replay.evaluate(prompts, example, context)

    def close(self) -> dict[str, Any]:
        from gepa_trace.store import forget_store

        self.inst.force_flush()
        self.inst.shutdown()
        # An idle child lives on (reused by the next run) and exits with os._exit: its
        # SQLite connections must close now, or the parent's close is not the last one
        # and SQLite leaves the -wal and -shm files beside the store.
        forget_store(self.store_url)
        return self.cache.counts() if self.cache is not None else {}


def process_evaluator(store_url: str, agent: str, settings: Any, config: Any,
                      budget: Budget, trace_ids: tuple[str, ...] | None = None) -> Any:
    """The ``ProcessEvaluator`` of ``gepa_trace.optimize`` (``settings``: its
    ``ReplaySettings``; ``config``: its ``OptimizerConfig``). A child that cannot import
    or build the agent is a ``PreflightFailed``."""
    from gepa_trace.errors import ConfigError
    from gepa_trace.optimizer.processes import ProcessEvaluator
    from gepa_trace.replay import preflight

    worker = ReplayWorker(store_url, agent, settings.entrypoint, settings.metric,
                          settings.task_lm, settings.judge_lm, settings.rubric,
                          settings.replay_cache, app_dir=preflight.app_path(settings.app_dir),
                          task_lm_base=settings.task_lm_base,
                          judge_lm_base=settings.judge_lm_base,
                          score_range=(config.min_score, config.perfect_score),
                          trace_ids=trace_ids)
    try:
        return ProcessEvaluator(worker, processes=settings.processes, threads=config.workers,
                                budget=budget)
    except ConfigError as exc:  # a child could not import or build the agent
        raise preflight.failed(str(exc)) from exc
