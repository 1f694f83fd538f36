"""``gepa_trace.optimize``: the GEPA loop on an agent's production traces.

Examples are the agent's recorded runs and their feedback; rollouts replay the agent
through its entry point (or, with none, re-render its recorded calls: log-only); the
replay cache answers every LLM call that was already recorded. After the loop, the seed
and the best candidate are both scored on the held-out test runs, and the paired
bootstrap of that difference is what ``gepa-trace export`` gates on.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from gepa_trace.errors import ConfigError
from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer import Optimizer, OptimizerConfig
from gepa_trace.optimizer.protocols import Example, RolloutContext
from gepa_trace.optimizer.result import OptimizationResult
from gepa_trace.prompts import PromptSet
from gepa_trace.prompts.gate import GateResult, paired_bootstrap
from gepa_trace.prompts.registry import current_prompts, record_versions
from gepa_trace.replay.cache import ReplayCache
from gepa_trace.replay.dataset import Dataset, ExampleFilter, SplitFractions, load_examples
from gepa_trace.replay.metrics import load_object, resolve_metric
from gepa_trace.store import EvaluationRow, OptimizationRunRow, Store, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplaySettings:
    """Where examples come from and how rollouts are made."""

    entrypoint: "str | Callable[[PromptSet], Any] | None" = None
    metric: "str | Callable" = "feedback"
    task_lm: str | None = None
    judge_lm: str | None = None
    rubric: str | None = None
    replay_cache: bool = True
    filters: ExampleFilter = field(default_factory=ExampleFilter)
    fractions: SplitFractions = field(default_factory=SplitFractions)
    min_examples: int = 6
    processes: int = 1  # >1: rollouts run in that many worker processes (replay only)


@dataclass
class HeldOut:
    """Seed and best scored on the held-out test runs, and the gate's verdict."""

    seed_scores: list[float]
    best_scores: list[float]
    gate: GateResult | None
    llm_calls: int = 0  # task-model calls the held-out rollouts sent

    def to_dict(self) -> dict[str, Any]:
        return {"n": len(self.seed_scores),
                "seed_test_score": _mean(self.seed_scores),
                "best_test_score": _mean(self.best_scores),
                "gate": self.gate.to_dict() if self.gate else None}


@dataclass
class OptimizeOutcome:
    """What ``optimize`` returns: the engine's result, the data it used, the held-out test."""

    result: OptimizationResult
    dataset: Dataset
    held_out: HeldOut
    replay_cache_hits: dict[str, int]
    task_calls_sent: int
    task_calls_made: int

    @property
    def best_prompts(self) -> PromptSet:
        return self.result.best_prompts

    @property
    def run_id(self) -> str:
        return self.result.run_id

    def summary(self) -> dict[str, Any]:
        out = self.result.summary()
        out["examples"] = self.dataset.summary()
        out["held_out"] = self.held_out.to_dict()
        out["replay_cache_hits"] = dict(self.replay_cache_hits)
        out["task_calls_made"] = self.task_calls_made
        out["task_calls_sent"] = self.task_calls_sent
        return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _as_lm(model: "str | Callable[[str], str] | None", budget: Budget, role: str):
    if model is None or callable(model):
        return model
    from gepa_trace.lm import LM

    return LM(model, budget=budget, role=role)


def load_entrypoint(entrypoint: "str | Callable | None") -> Callable | None:
    """The ``build_agent`` function, loaded before anything is spent."""
    if entrypoint is None or callable(entrypoint):
        return entrypoint
    return load_object(entrypoint, "entry point")


def _builder(build_agent: Callable, task_lm: str | None) -> Callable[[PromptSet], Any]:
    if task_lm is None:
        return build_agent
    try:
        accepts_model = "model" in inspect.signature(build_agent).parameters
    except (TypeError, ValueError):
        accepts_model = False
    if not accepts_model:
        raise ConfigError("--task-lm needs an entry point that accepts a `model` keyword "
                          "(build_agent(prompts, model=...))")
    return lambda prompts: build_agent(prompts, model=task_lm)


def _instrumentation(store: Store, agent: str):
    from gepa_trace.collectors.instrument import active_instrumentation, instrument

    active = active_instrumentation()
    if active is not None and active.active and active.store_url == store.url:
        return active, False
    return instrument(store=store, service_name=agent), True


def evaluate_held_out(evaluator: Any, result: OptimizationResult, seed_prompts: PromptSet,
                      test: list[Example], store: Store | None, workers: int,
                      seed: int = 0) -> HeldOut:
    """Score the seed and the best candidate on ``test``; store each as purpose 'test'."""
    if not test:
        return HeldOut([], [], None)
    seed_candidate = next(c for c in result.candidates if c.origin == "seed")
    jobs = [(seed_candidate.id, seed_prompts), (result.best_candidate_id, result.best_prompts)]
    scores: dict[int, list[float]] = {}
    rows = []
    llm_calls = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for candidate_id, prompts in jobs:
            if candidate_id in scores:
                continue
            context = RolloutContext(result.run_id, candidate_id, "test")
            rollouts = list(pool.map(lambda e: evaluator.evaluate(prompts, e, context), test))
            scores[candidate_id] = [r.score for r in rollouts]
            llm_calls += sum(r.llm_calls for r in rollouts)
            rows += [dict(run_id=result.run_id, candidate_id=candidate_id, example_id=e.id,
                          purpose="test", score=r.score, feedback=r.feedback,
                          trace_id=r.trace_id, error=r.error, llm_calls=r.llm_calls,
                          cache_hits=r.cache_hits, tokens=r.tokens, cost_usd=r.cost_usd,
                          created_at=time.time()) for e, r in zip(test, rollouts)]
    if store is not None:
        with store.write() as conn:
            conn.execute(EvaluationRow.__table__.insert(), rows)
    seed_scores = scores[seed_candidate.id]
    best_scores = scores[result.best_candidate_id]
    gate = paired_bootstrap(seed_scores, best_scores, seed=seed)
    return HeldOut(seed_scores, best_scores, gate, llm_calls)


def optimize(agent: str, *, reflection_lm: "str | Callable[[str], str]",
             entrypoint: "str | Callable | None" = None, metric: "str | Callable" = "feedback",
             budget: Budget | None = None, store: "str | Store | None" = None,
             seed_prompts: PromptSet | None = None, settings: ReplaySettings | None = None,
             config: OptimizerConfig | None = None, resume: str | None = None,
             warm_start: bool = False, callbacks: Iterable[object] = ()) -> OptimizeOutcome:
    """Optimize ``agent``'s prompts from its recorded runs (see the module docstring).

    ``entrypoint``: ``build_agent(prompts) -> Runnable`` or ``"pkg.module:build_agent"``;
    None means log-only replay. ``metric``: a builtin name (feedback, exact_match,
    contains, judge), ``"pkg.module:fn"`` or a callable. ``budget`` defaults to 300
    rollouts. Everything is recorded in ``store``; ``resume`` continues a stored run.
    """
    settings = settings or ReplaySettings(entrypoint=entrypoint, metric=metric)
    if entrypoint is not None or metric != "feedback":
        settings = ReplaySettings(**{**settings.__dict__, "entrypoint": entrypoint or
                                     settings.entrypoint, "metric": metric})
    build_agent = load_entrypoint(settings.entrypoint)  # fail before spending anything
    budget = budget or Budget(max_rollouts=300)
    store = open_store(store)
    reflection = _as_lm(reflection_lm, budget, "reflection")
    judge = _as_lm(settings.judge_lm or settings.task_lm, budget, "judge")
    metric_fn = resolve_metric(settings.metric, judge_lm=judge, rubric=settings.rubric)
    log_only = build_agent is None
    dataset = load_examples(store, agent, filters=settings.filters,
                            fractions=settings.fractions, min_examples=settings.min_examples,
                            need_signal=log_only or settings.metric == "feedback")
    if seed_prompts is None:
        seed_prompts = current_prompts(store, agent)
    record_versions(store, seed_prompts, origin="observed")
    config = config or OptimizerConfig()
    if warm_start and config.warm_start_from is None:
        from gepa_trace.optimizer.persistence import latest_run_id

        previous = latest_run_id(store, agent)
        if previous is None:
            log.warning("no earlier run of %r to warm-start from; starting from its "
                        "current prompts", agent)
        else:
            config = OptimizerConfig(**{**config.__dict__, "warm_start_from": previous})

    if not isinstance(settings.processes, int) or settings.processes < 1:
        raise ConfigError(f"processes must be an integer >= 1, got {settings.processes!r}")
    in_processes = settings.processes > 1 and not log_only
    if settings.processes > 1 and log_only:
        log.warning("log-only replay runs in this process; --processes applies to agent "
                    "replay (--entrypoint)")
    inst, owned = _instrumentation(store, agent)
    cache = None
    if settings.replay_cache:  # with worker processes, each has its own; this one counts
        cache = ReplayCache() if in_processes else ReplayCache.from_store(store, agent)
    from langchain_core.globals import get_llm_cache, set_llm_cache

    previous_cache = get_llm_cache()
    if cache is not None:
        set_llm_cache(cache)
    evaluator: Any = None
    try:
        if log_only:
            from gepa_trace.lm import LM
            from gepa_trace.replay.logonly import LogOnlyReplay

            if judge is None:
                raise ConfigError("log-only replay (no --entrypoint) needs a judge: give "
                                  "--judge-lm or --task-lm")
            task_lms: dict[str | None, Any] = {}

            def lm_for_model(model: str | None):
                name = settings.task_lm or model
                if name is None:
                    raise ConfigError("a recorded call has no model; give --task-lm")
                if name not in task_lms:
                    task_lms[name] = LM(name, budget=budget, role="task")
                return task_lms[name]

            evaluator = LogOnlyReplay(store, agent, dataset.all(), judge_lm=judge,
                                      lm_for_model=lm_for_model, rubric=settings.rubric)
        elif in_processes:
            from gepa_trace.optimizer.processes import ProcessEvaluator
            from gepa_trace.replay.workers import ReplayWorker

            evaluator = ProcessEvaluator(
                ReplayWorker(store.url, agent, settings.entrypoint, settings.metric,
                             settings.task_lm, settings.judge_lm, settings.rubric,
                             settings.replay_cache),
                processes=settings.processes, threads=config.workers, budget=budget)
        else:
            from gepa_trace.replay.harness import AgentReplay

            evaluator = AgentReplay(_builder(build_agent, settings.task_lm), metric_fn,
                                    agent=agent, instrumentation=inst)
        if resume:
            opt = Optimizer.resume(resume, evaluator=evaluator, reflection_lm=reflection,
                                   train=dataset.train, val=dataset.val, budget=budget,
                                   store=store, callbacks=callbacks, config=config if
                                   config != OptimizerConfig() else None)
        else:
            opt = Optimizer(evaluator, reflection, seed_prompts, dataset.train, dataset.val,
                            budget, store=store, agent=agent, config=config,
                            callbacks=callbacks)
        result = opt.run()
        held_out = evaluate_held_out(evaluator, result, opt.seed_prompts, dataset.test, store,
                                     opt.config.workers, seed=opt.config.seed)
    finally:
        close = getattr(evaluator, "close", None)
        if in_processes and close is not None:  # the children flush their spans
            for counts in close():
                if cache is not None and counts:
                    cache.absorb(counts)
        set_llm_cache(previous_cache)
        inst.force_flush()
        if owned:
            inst.shutdown()
    record_versions(store, result.best_prompts, run_id=result.run_id,
                    candidate_id=result.best_candidate_id)
    hits = cache.resolve_components(store, result.run_id) if cache is not None else {}
    # Rollouts of the loop and of the held-out test, as the agent made them (cache hits
    # included) and as they reached the model.
    sent = result.totals.llm_calls_by_role.get("task", 0) + held_out.llm_calls
    _save_held_out(store, result.run_id, held_out, hits)
    return OptimizeOutcome(result=result, dataset=dataset, held_out=held_out,
                           replay_cache_hits=hits, task_calls_sent=sent,
                           task_calls_made=sent + sum(hits.values()))


def _save_held_out(store: Store, run_id: str, held_out: HeldOut, hits: dict[str, int]) -> None:
    from sqlalchemy import select, update

    table = OptimizationRunRow.__table__
    with store.write() as conn:
        raw = conn.execute(select(table.c.totals).where(table.c.id == run_id)).scalar()
        totals = json.loads(raw or "{}")
        totals["held_out"] = held_out.to_dict()
        totals["replay_cache_hits_by_component"] = hits
        conn.execute(update(table).where(table.c.id == run_id)
                     .values(totals=json.dumps(totals)))
