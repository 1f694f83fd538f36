"""Agent replay in worker processes (``ReplaySettings.processes``, ``--processes``).

``ReplayWorker`` is what a worker process builds its evaluator from: the store, the
agent's entry point and metric (by name, or module-level callables), the task and judge
models, and whether the replay cache is on. Each child records its rollouts' spans into
the same store as the parent (SQLite in WAL mode, or PostgreSQL) and keeps its own
replay cache; since an example always goes to the same child, the cache serves all of
that example's rollouts as it would in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer.protocols import Example, Rollout, RolloutContext
from gepa_trace.prompts import PromptSet


@dataclass(frozen=True)
class ReplayWorker:
    """A picklable recipe for ``AgentReplay`` in a worker process."""

    store_url: str
    agent: str
    entrypoint: "str | Callable[[PromptSet], Any]"
    metric: "str | Callable" = "feedback"
    task_lm: str | None = None
    judge_lm: str | None = None
    rubric: str | None = None
    replay_cache: bool = True

    def __call__(self, budget: Budget) -> "_ChildReplay":
        from langchain_core.globals import set_llm_cache

        from gepa_trace.collectors.instrument import instrument
        from gepa_trace.replay.cache import ReplayCache
        from gepa_trace.replay.harness import AgentReplay
        from gepa_trace.replay.metrics import resolve_metric
        from gepa_trace.replay.optimize import _as_lm, _builder, load_entrypoint
        from gepa_trace.store import open_store

        store = open_store(self.store_url)
        judge = _as_lm(self.judge_lm or self.task_lm, budget, "judge")
        metric = resolve_metric(self.metric, judge_lm=judge, rubric=self.rubric)
        build = _builder(load_entrypoint(self.entrypoint), self.task_lm)
        cache = ReplayCache.from_store(store, self.agent) if self.replay_cache else None
        set_llm_cache(cache)
        inst = instrument(store=store, service_name=self.agent)
        return _ChildReplay(AgentReplay(build, metric, agent=self.agent, instrumentation=inst),
                            inst, cache)


class _ChildReplay:
    """The evaluator a worker process runs; ``close`` flushes its spans to the store and
    reports its replay cache's counts."""

    def __init__(self, replay: Any, inst: Any, cache: Any):
        self.replay, self.inst, self.cache = replay, inst, cache

    def evaluate(self, prompts: PromptSet, example: Example,
                 context: RolloutContext) -> Rollout:
        return self.replay.evaluate(prompts, example, context)

    def close(self) -> dict[str, Any]:
        from langchain_core.globals import set_llm_cache

        self.inst.force_flush()
        self.inst.shutdown()
        set_llm_cache(None)
        return self.cache.counts() if self.cache is not None else {}
