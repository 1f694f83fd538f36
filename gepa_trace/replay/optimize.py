"""``gepa_trace.optimize``: the GEPA loop on an agent's production traces.

Examples are the agent's recorded runs and their feedback; rollouts replay the agent
through its entry point (or, with none, re-render its recorded calls: log-only); the
replay cache answers every LLM call that was already recorded. Before the loop, the
preflight (``replay.preflight``) tries the entry point, the metric and every configured
model once, and stops with ``PreflightFailed`` when one does not work. After the loop,
the seed and the best candidate are both scored on the held-out test runs
(``replay.heldout``), and the paired bootstrap of that difference is what ``gepa-trace
export`` gates on. Last, what each phase spent (preflight, search, held-out) is stored
once in the run's totals (``OptimizeOutcome.spent``).

Errors are not scores: a run the engine stopped because rollouts kept failing raises
``RolloutsFailed`` (what it had is kept; ``--resume`` continues it), and a held-out
rollout that still fails after its retries leaves the held-out test without a verdict
(``HeldOut.failed``), never a zero in the gate.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gepa_trace.errors import ConfigError, LockLost, RolloutsFailed
from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer import Optimizer, OptimizerConfig
from gepa_trace.optimizer.result import OptimizationResult, PhaseSpend, command_spend, search_spend
from gepa_trace.prompts import PromptSet
from gepa_trace.prompts.registry import record_versions
from gepa_trace.prompts.seed import choose_seed, given_sources, save_seed_sources
from gepa_trace.replay import preflight
from gepa_trace.replay.cache import ReplayCache
from gepa_trace.replay.dataset import Dataset, ExampleFilter, SplitFractions, load_examples
from gepa_trace.replay.heldout import HeldOut, evaluate_held_out, save_run_totals, stored_totals
from gepa_trace.replay.metrics import CheckedMetric, judge_model, resolve_metric
from gepa_trace.replay.recorded import RecordedRuns
from gepa_trace.store import Store, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplaySettings:
    """Where examples come from and how rollouts are made.

    ``app_dir``: the folder ``module:function`` entry points and metrics are imported
    from first (default: the working directory), in this process and in worker
    processes. ``*_lm_base``: the ``api_base`` of an OpenAI-compatible server for that
    model (its key comes from the provider's usual variable, e.g. ``OPENAI_API_KEY``
    for ``openai/...`` models); ``task_lm_base`` reaches ``build_agent`` as ``api_base=``
    when it takes that keyword.
    """

    entrypoint: str | Callable[[PromptSet], Any] | None = None
    metric: str | Callable = "feedback"
    task_lm: str | None = None
    judge_lm: str | None = None
    task_lm_base: str | None = None
    judge_lm_base: str | None = None
    reflection_lm_base: str | None = None
    app_dir: str | None = None
    rubric: str | None = None
    replay_cache: bool = True
    #: read the seed's (any candidate's) rollouts from the recorded runs that carried
    #: its exact prompts, for free (``replay.recorded``)
    recorded_runs: bool = True
    filters: ExampleFilter = field(default_factory=ExampleFilter)
    fractions: SplitFractions = field(default_factory=SplitFractions)
    min_examples: int = 6
    processes: int = 1  # >1: rollouts run in that many worker processes (replay only)
    #: share of the LLM-call, token, dollar and time limits the search leaves for the
    #: held-out test (max_rollouts counts the search alone)
    held_out_share: float = 0.3
    #: per-source weights of feedback records in a run's score (``store.verdict``)
    source_weights: Mapping[str, float] | None = None


@dataclass
class OptimizeOutcome:
    """What ``optimize`` returns: the engine's result, the data it used, the held-out test.

    ``spent``: what the command spent, by phase and in all (``command_spend``), exactly
    as stored in the run's totals; ``task_calls_sent`` / ``task_calls_made``: the task
    calls of every phase that reached the model, and those plus the replay-cache hits.
    """

    result: OptimizationResult
    dataset: Dataset
    held_out: HeldOut
    replay_cache_hits: dict[str, int]
    task_calls_sent: int
    task_calls_made: int
    spent: dict[str, Any] = field(default_factory=dict)
    #: per component, where its seed version came from (``prompts.seed``)
    seed_sources: dict[str, Any] = field(default_factory=dict)

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
        out["spent"] = self.spent
        out["seed_sources"] = self.seed_sources
        return out


def _as_lm(model: str | Callable[[str], str] | None, budget: Budget, role: str,
           api_base: str | None = None):
    if model is None or callable(model):
        return model
    from gepa_trace.lm import LM

    return LM(model, budget=budget, role=role, api_base=api_base)


def load_entrypoint(entrypoint: str | Callable | None,
                    app_dir: str | None = None) -> Callable | None:
    """The ``build_agent`` function, loaded before anything is spent (``PreflightFailed``
    when it cannot be imported; ``app_dir``, default the working directory, first)."""
    return preflight.import_user_object(entrypoint, "entry point", app_dir)


def _accepts(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _builder(build_agent: Callable, task_lm: str | None,
             api_base: str | None = None) -> Callable[[PromptSet], Any]:
    if task_lm is None:
        return build_agent
    if not _accepts(build_agent, "model"):
        raise ConfigError("--task-lm needs an entry point that accepts a `model` keyword "
                          "(build_agent(prompts, model=...))")
    extra = {"api_base": api_base} if api_base and _accepts(build_agent, "api_base") else {}
    return lambda prompts: build_agent(prompts, model=task_lm, **extra)


def _instrumentation(store: Store, agent: str):
    from gepa_trace.collectors.instrument import active_instrumentation, instrument

    active = active_instrumentation()
    if active is not None and active.active and active.store_url == store.url:
        return active, False
    return instrument(store=store, service_name=agent), True


def _model(model: str | Callable[[str], str] | None, budget: Budget, role: str,
           api_base: str | None) -> Any:
    """``_as_lm``, with a model litellm or the simulator rejects by name (an unknown
    ``gepa-sim/...`` model) reported as a preflight failure."""
    try:
        return _as_lm(model, budget, role, api_base)
    except ConfigError as exc:
        raise preflight.failed(f"the {role} LM {model!r}: {exc}") from exc


def checked_metric(spec: str | Callable, judge: Any, rubric: str | None,
                   app_dir: str | None, score_range: tuple[float, float]) -> Callable:
    """The metric (imported from ``app_dir`` first), checked against its contract on
    every call; this process and worker processes build it the same way."""
    if isinstance(spec, str) and ":" in spec:
        spec = preflight.import_user_object(spec, "metric", app_dir)
    return CheckedMetric(resolve_metric(spec, judge_lm=judge, rubric=rubric), *score_range)


def _settings(settings: ReplaySettings | None, entrypoint: Any, metric: Any,
              app_dir: Any) -> ReplaySettings:
    """The settings, with what was passed as arguments of ``optimize`` on top."""
    settings = settings or ReplaySettings()
    given = {"entrypoint": entrypoint, "app_dir": None if app_dir is None else str(app_dir)}
    given = {k: v for k, v in given.items() if v is not None}
    if metric != "feedback":
        given["metric"] = metric
    settings = dataclasses.replace(settings, **given)
    if settings.app_dir is not None:  # absolute: worker processes resolve it too
        settings = dataclasses.replace(settings, app_dir=preflight.app_path(settings.app_dir))
    return settings


def _judge_default(settings: ReplaySettings, reflection_lm: Any) -> ReplaySettings:
    """``--metric feedback`` without ``--judge-lm`` judges with the reflection LM's
    family (``metrics.judge_model``); set here so worker processes get it by name."""
    if settings.metric != "feedback" or settings.judge_lm is not None \
            or not isinstance(reflection_lm, str):
        return settings
    return dataclasses.replace(settings, judge_lm=judge_model("feedback", None, None,
                                                              reflection_lm),
                               judge_lm_base=settings.reflection_lm_base)


def optimize(agent: str, *, reflection_lm: str | Callable[[str], str],
             entrypoint: str | Callable | None = None, metric: str | Callable = "feedback",
             budget: Budget | None = None, store: str | Store | None = None,
             seed_prompts: PromptSet | None = None, settings: ReplaySettings | None = None,
             config: OptimizerConfig | None = None, resume: str | None = None,
             warm_start: bool = False, callbacks: Iterable[object] = (),
             app_dir: str | None = None) -> OptimizeOutcome:
    """Optimize ``agent``'s prompts from its recorded runs (see the module docstring).

    ``entrypoint``: ``build_agent(prompts) -> Runnable`` or ``"pkg.module:build_agent"``;
    None means log-only replay. ``metric``: a builtin name (feedback, exact_match,
    contains, judge), ``"pkg.module:fn"`` or a callable. Modules are imported from
    ``app_dir`` (default: the working directory) first. ``budget`` defaults to 300
    rollouts. Everything is recorded in ``store``; ``resume`` continues a stored run.

    Raises ``PreflightFailed`` before anything is written when the entry point, the
    metric or a model does not work (``replay.preflight``), and ``RolloutsFailed`` after
    saving what the run had when it stopped because rollouts kept failing. A held-out
    test that failed is in ``outcome.held_out.failed`` (the CLI exits 7 on it).
    """
    settings = _judge_default(_settings(settings, entrypoint, metric, app_dir), reflection_lm)
    started = time.monotonic()
    config = config or OptimizerConfig()
    build_agent = load_entrypoint(settings.entrypoint, settings.app_dir)  # before spending
    budget = budget or Budget(max_rollouts=300)
    # a budget passed in may have been spent from before: only this command's counts
    at_start = PhaseSpend.from_budget(dataclasses.asdict(budget.spent()))
    store = open_store(store)
    reflection = _model(reflection_lm, budget, "reflection", settings.reflection_lm_base)
    judge = _model(judge_model(settings.metric, settings.judge_lm, settings.task_lm,
                               reflection_lm), budget, "judge",
                   settings.judge_lm_base if settings.judge_lm else settings.task_lm_base)
    metric_fn = checked_metric(settings.metric, judge, settings.rubric, settings.app_dir,
                               (config.min_score, config.perfect_score))
    log_only = build_agent is None
    dataset = load_examples(store, agent, filters=settings.filters,
                            fractions=settings.fractions, min_examples=settings.min_examples,
                            need_signal=log_only or settings.metric == "feedback",
                            source_weights=settings.source_weights)
    if seed_prompts is None:
        seed = choose_seed(store, agent)
        seed_prompts, seed_sources = seed.prompts, seed.sources_dict()
    else:
        seed_sources = given_sources(seed_prompts)
    checked = {"reflection LM": reflection}
    if settings.metric in ("judge", "feedback") or log_only:
        checked["judge LM"] = judge
    if settings.task_lm and not log_only:  # log-only checks the models it will call below
        checked["task LM"] = _model(settings.task_lm, budget, "task", settings.task_lm_base)
    preflight.check_models(checked)
    builder = None if log_only else _builder(build_agent, settings.task_lm,
                                             settings.task_lm_base)
    if builder is not None:
        preflight.check_agent(builder, seed_prompts)
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
    # The cache answers only this run's rollouts (AgentReplay serves it around each one),
    # from the recorded calls of the examples in use. With worker processes, each child
    # has its own and this one only adds up their counts.
    trace_ids = tuple(e.trace_id for e in dataset.all() if e.trace_id)
    if settings.replay_cache and not log_only:
        cache = ReplayCache() if in_processes else ReplayCache.from_store(store, agent,
                                                                          trace_ids)
    evaluator: Any = None
    try:
        if log_only:
            from gepa_trace.replay.logonly import log_only_evaluator

            evaluator = log_only_evaluator(store, agent, dataset.all(), judge, budget,
                                           settings)
            # a run none of whose calls re-renders is no example (never a score of 0)
            dataset.keep(evaluator.can_replay)
            if not dataset.val:
                raise ConfigError(
                    f"log-only replay: no recorded call of {agent!r} can be re-rendered "
                    f"({dataset.skipped_not_replayable} runs lack their template "
                    "variables); record with gepa_trace.instrument(), or give --entrypoint")
        elif in_processes:
            from gepa_trace.replay.workers import process_evaluator

            evaluator = process_evaluator(store.url, agent, settings, config, budget,
                                          trace_ids)
        else:
            from gepa_trace.replay.harness import AgentReplay

            evaluator = AgentReplay(builder, metric_fn, agent=agent, instrumentation=inst,
                                    cache=cache)
        # The model probes are what the budget metered since the start; the seed
        # rollout then adds its own calls, hits, tokens and dollars.
        models = PhaseSpend.from_budget(dataclasses.asdict(budget.spent())).minus_budget(
            at_start)
        probe = None
        if not log_only:
            probe = preflight.check_rollout(evaluator, seed_prompts, dataset.train[0],
                                            low=config.min_score, high=config.perfect_score)
            # the preflight spends from the budget, and is the first measure of what
            # one rollout may cost (rollouts in flight hold that much: lm/budget.py)
            budget.settle_rollout(probe.llm_calls, probe.tokens, probe.cost_usd,
                                  started=False)
        # All the budget holds so far is the preflight's; the loop's snapshot includes
        # it, so it is taken out of the search phase again.
        charged = PhaseSpend.from_budget(dataclasses.asdict(budget.spent())).minus_budget(
            at_start)
        preflight_spend = _preflight_spend(models, probe, time.monotonic() - started)
        record_versions(store, seed_prompts, origin="observed")
        recorded = None
        if settings.recorded_runs and not log_only:
            recorded = RecordedRuns(store, dataset.train + dataset.val, metric_fn,
                                    task_lm=settings.task_lm)
        if resume:
            # the engine's checkpoints rewrite the stored totals: earlier commands'
            # spend is read before it starts
            stored = stored_totals(store, resume)
            # the run's seed was chosen by its first command
            seed_sources = stored.get("seed_sources") or seed_sources
            earlier = stored.get("command") or {}
            earlier_hits = stored.get("replay_cache_hits_by_component") or {}
            opt = Optimizer.resume(resume, evaluator=evaluator, reflection_lm=reflection,
                                   train=dataset.train, val=dataset.val, budget=budget,
                                   store=store, callbacks=callbacks, config=config if
                                   config != OptimizerConfig() else None,
                                   recorded=recorded)
            # Optimizer.resume set the budget to the run's snapshot, which does not hold
            # this command's preflight: charged again, so the limits cover it
            budget.add_spent(charged.llm_calls_by_role, charged.tokens, charged.cost_usd)
        else:
            opt = Optimizer(evaluator, reflection, seed_prompts, dataset.train, dataset.val,
                            budget, store=store, agent=agent, config=config,
                            callbacks=callbacks, recorded=recorded)
        if dataset.test and settings.held_out_share:
            budget.hold_back(settings.held_out_share)  # kept for the held-out test
        result = opt.run()
        if opt.lock_lost:  # another run owns the agent now: no held-out, no versions
            raise LockLost(f"{opt.lock_lost} (run {result.run_id} can be resumed later "
                           "with --resume)")
        failed_with = result.failed_with  # rollouts kept failing: the engine stopped
        before_held_out = PhaseSpend.from_budget(dataclasses.asdict(budget.spent()))
        if failed_with:
            held_out = HeldOut([], [], None, failed="not run: the run stopped because "
                                                    "rollouts kept failing")
        else:
            budget.end_rollouts()  # the search's abandoned rollouts hold nothing now
            budget.release_held_back()
            held_out = evaluate_held_out(
                evaluator, result, opt.seed_prompts, dataset.test, store, opt.config.workers,
                seed=opt.config.seed,
                score_range=(opt.config.min_score, opt.config.perfect_score), budget=budget)
        # a judge metric's calls are metered by the budget, not reported by the rollouts
        judged = PhaseSpend.from_budget(dataclasses.asdict(budget.spent())).minus_budget(
            before_held_out)
        held_out.spend = _with_metered(held_out.spend, judged)
    finally:
        close = getattr(evaluator, "close", None)
        if in_processes and close is not None:  # the children flush their spans
            for counts in close():
                if cache is not None and counts:
                    cache.absorb(counts)
        inst.force_flush()
        if owned:
            inst.shutdown()
    record_versions(store, result.best_prompts, run_id=result.run_id,
                    candidate_id=result.best_candidate_id)
    hits = cache.resolve_components(store, result.run_id) if cache is not None else {}
    if resume:  # the run's hits across its commands, as its spend is
        hits = {c: hits.get(c, 0) + earlier_hits.get(c, 0)
                for c in sorted(set(hits) | set(earlier_hits))}
    spent = _command_spent(result, preflight_spend, charged, held_out.spend,
                           earlier if resume else None)
    save_run_totals(store, result.run_id, held_out, hits, spent)
    save_seed_sources(store, result.run_id, seed_sources)
    sent = int(spent["all"]["llm_calls_by_role"].get("task", 0))
    outcome = OptimizeOutcome(result=result, dataset=dataset, held_out=held_out,
                              replay_cache_hits=hits, task_calls_sent=sent,
                              task_calls_made=sent + int(spent["all"]["replay_cache_hits"]),
                              spent=spent, seed_sources=seed_sources)
    if failed_with:
        error = RolloutsFailed(f"run {result.run_id} stopped: rollouts kept failing: "
                               f"{failed_with} (fix it, then: gepa-trace optimize --resume "
                               f"{result.run_id})")
        error.outcome = outcome  # what it had and spent, for the CLI's summary
        raise error
    return outcome


def _preflight_spend(models: PhaseSpend, probe: Any, seconds: float) -> PhaseSpend:
    """The preflight's spend: the model probes (as the budget metered them) and the
    seed rollout (its own calls, cache hits, tokens and dollars, as it reported them)."""
    if probe is None:
        return dataclasses.replace(models, seconds=seconds)
    own = PhaseSpend(1, {"task": probe.llm_calls}, probe.cache_hits, probe.tokens,
                     probe.cost_usd)
    return dataclasses.replace(models + own, seconds=seconds)


def _with_metered(own: PhaseSpend, metered: PhaseSpend) -> PhaseSpend:
    """The held-out test's spend: rollouts, cache hits and errors as its rollouts
    reported them; calls, tokens and dollars as the budget metered them during the
    test (each attempt is settled on the budget as it ends, a judge's calls as they are
    made), so a judge metric's calls are in it too."""
    return dataclasses.replace(own, llm_calls_by_role=dict(metered.llm_calls_by_role),
                               tokens=metered.tokens, cost_usd=metered.cost_usd)


def _command_spent(result: OptimizationResult, preflight_spend: PhaseSpend,
                   charged: PhaseSpend, held_out: PhaseSpend,
                   earlier: dict[str, Any] | None) -> dict[str, Any]:
    """The run's ``command_spend`` block, computed once, here. The search phase is the
    loop's (across resumes); the preflight and held-out phases add this command's to
    those of the run's earlier commands. The budget's snapshot holds what every
    command's preflight charged (a resumed command's is charged again once the budget
    is restored), so those are what the search phase leaves out. ``earlier``: the
    run's stored block before a resumed command started (None: a new run)."""
    phases = (earlier or {}).get("phases") or {}
    before = charged
    if earlier is not None:
        before = PhaseSpend.from_dict(earlier.get("budget_before_search")) + charged
    return command_spend(
        {"preflight": PhaseSpend.from_dict(phases.get("preflight")) + preflight_spend,
         "search": search_spend(result.totals, before),
         "held_out": PhaseSpend.from_dict(phases.get("held_out")) + held_out},
        budget_before_search=before)

