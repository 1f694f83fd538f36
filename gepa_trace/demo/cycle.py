"""The whole cycle on the example agent, as ``gepa-trace demo`` runs it.

1. production traffic: ``runs`` questions answered by the agent with its seed prompts,
   traced into the store by ``gepa_trace.instrument``, with user feedback on some
   (``demo.traffic``: most runs get none; thumbs, corrections, vague comments);
2. the nightly optimization from those traces (agent replay, replay cache, GEPA) with
   the built-in ``feedback`` metric, exactly as ``gepa-trace optimize --metric
   feedback`` runs it: the recorded feedback is all it learns from, the world's answer
   key is never imported into it;
3. the held-out before/after with its bootstrap interval, estimated from the recorded
   feedback (what a user has, and what the export gate uses);
4. ``prompts.json`` exported when the gain is significant, and ``report.html``;
5. afterwards only, the TRUE held-out accuracy: the world's oracle (``demo.metric``)
   scores the seed and the best prompts on every distinct recorded question of the
   held-out test split (with feedback or not). Both figures are reported, labelled.

Offline by default (the simulated ``gepa-sim/*`` models, labelled so); with real model
strings the same cycle runs against real providers.

``DemoSettings.poison`` (a ``demo.poison.Poison``, default none; for attack tests and
benchmarks) poisons a share of the traffic; with its payload in tool output, the agent
the optimization replays searches the same poisoned knowledge base. The optimization is
run as always: nothing in it knows of the poison.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from gepa_trace.errors import GateRefused, ReviewRequired
from gepa_trace.optimizer.result import spend_lines


@dataclass(frozen=True)
class DemoSettings:
    store: str | None = None  # default: sqlite:///<out_dir>/demo.db
    out_dir: Path = Path("gepa-demo")
    runs: int = 500
    feedback_rate: float = 0.4
    task_lm: str = "gepa-sim/task"
    reflection_lm: str = "gepa-sim/reflect"
    budget_rollouts: int = 1500
    # train, validation, held-out test shares (`optimize --split`). Only the runs with
    # feedback are examples (about 40% here), so the usual 10% validation would be ~17
    # runs, too few to tell candidates apart: measured across 5 traffic seeds in
    # bench/RESULTS.md ("Demo from production feedback only").
    split: tuple[float, float, float] = (0.5, 0.2, 0.3)
    workers: int = 4
    processes: int = 1
    seed: int = 0
    warm_start: bool = False
    poison: Any = None  # a demo.poison.Poison: an attacker's share of the traffic
    progress: Callable[[str], None] = field(default=lambda _msg: None)


def run_demo(settings: DemoSettings, callbacks: list[object] = ()) -> dict[str, Any]:
    """Run the cycle; returns the summary ``gepa-trace demo --json`` prints. Its
    ``rollouts``, ``llm_calls``, ``replay_cache_hits``, ``tokens`` and ``cost_usd`` are
    the ``all`` of the run's stored spend block (``spent``), as every other printer of
    the run shows them."""
    import gepa_trace as gt
    from gepa_trace.demo import AGENT_NAME, build_agent
    from gepa_trace.demo.traffic import run_traffic, traffic_questions
    from gepa_trace.optimizer import OptimizerConfig
    from gepa_trace.optimizer.result import run_spend
    from gepa_trace.prompts.export import export_run
    from gepa_trace.replay import ReplaySettings
    from gepa_trace.replay.dataset import ExampleFilter, SplitFractions
    from gepa_trace.replay.heldout import stored_totals
    from gepa_trace.report import write_report
    from gepa_trace.store import open_store

    started = time.time()
    say = settings.progress
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    url = settings.store or f"sqlite:///{(out_dir / 'demo.db').resolve()}"
    store = open_store(url, create=True)  # the demo records its own traffic
    simulated = settings.task_lm.startswith("gepa-sim/")
    say(f"[1/5] production traffic: {settings.runs} runs of {AGENT_NAME} on "
        f"{settings.task_lm}{' (simulated)' if simulated else ''} -> {store}")
    inst = gt.instrument(store=store, service_name=AGENT_NAME)
    window_start = time.time() - 1
    poison, entrypoint = settings.poison, build_agent
    if poison is not None:
        poison = poison.aimed([str(q.meta["company"])
                               for q in traffic_questions(settings.runs, settings.seed)])
        entrypoint = partial(build_agent, poison=poison)  # a planted page stays planted
    run_traffic(settings.runs, store=store, seed=settings.seed,
                feedback_rate=settings.feedback_rate, model=settings.task_lm, poison=poison)
    inst.force_flush()
    say(f"      {settings.runs} traces stored in {time.time() - started:.0f}s")

    say(f"[2/5] nightly optimization with {settings.reflection_lm}, "
        f"{settings.budget_rollouts} rollouts, {settings.workers} workers"
        + (f" in {settings.processes} processes" if settings.processes > 1 else ""))
    # The built-in feedback metric, by name, with its default judge (the reflection
    # LM's family): the path a user takes with `optimize --metric feedback`.
    replay = ReplaySettings(entrypoint=entrypoint, metric="feedback", task_lm=settings.task_lm,
                            filters=ExampleFilter(since=window_start),
                            fractions=SplitFractions(*settings.split),
                            processes=settings.processes)
    outcome = gt.optimize(AGENT_NAME, reflection_lm=settings.reflection_lm,
                          entrypoint=entrypoint, metric="feedback",
                          budget=gt.Budget(max_rollouts=settings.budget_rollouts),
                          store=store, settings=replay,
                          config=OptimizerConfig(seed=settings.seed, workers=settings.workers),
                          warm_start=settings.warm_start, callbacks=callbacks)
    result = outcome.result
    gate = outcome.held_out.gate
    if gate is not None:
        say(f"[3/5] estimated from recorded feedback: {gate.sentence()}"
            + (" (simulated models)" if simulated else ""))
    else:
        say("[3/5] no held-out runs to measure the gain on")

    exported: str | None = None
    refusal = None
    try:  # the gate and the review, as `gepa-trace export` applies them (never --approve)
        exported = str(export_run(store, result.run_id, out_dir / "prompts.json").path)
        say(f"[4/5] exported {exported}")
    except (GateRefused, ReviewRequired) as refused:
        refusal = {"by": "review" if isinstance(refused, ReviewRequired) else "gate",
                   "reason": str(refused)}
        say(f"[4/5] not exported: {refused}")
    report = write_report(store, result.run_id, out_dir / "report.html")
    say(f"      report {report}")
    say("[5/5] true held-out accuracy: the world's answer key scores the seed and the "
        "best prompts (reporting only; the optimization never saw it)")
    true = true_held_out(store, result.best_prompts, settings, replay, result.run_id)
    say(f"      TRUE held-out accuracy: {_pct(true['true_seed_test_score'])} -> "
        f"{_pct(true['true_best_test_score'])} on {true['true_test_questions']} questions")

    # The run's stored spend block, the one `runs show`, the report and `optimize` print:
    # every phase of the command (preflight, search, held-out), not the loop alone.
    spent = run_spend(stored_totals(store, result.run_id))
    every = spent["all"]
    held = outcome.held_out
    return {
        "run_id": result.run_id, "agent": AGENT_NAME, "store": str(store.url),
        "simulated": simulated,
        "seed_val_score": result.seed_val_score, "best_val_score": result.best_val_score,
        "val_size": result.val_size, "val_grown_by": result.val_grown_by,
        "metric": "feedback",
        "seed_test_score": held.to_dict()["seed_test_score"],
        "best_test_score": held.to_dict()["best_test_score"],
        **true,
        "ci_low": gate.ci_low if gate else None, "ci_high": gate.ci_high if gate else None,
        "significant": bool(gate and gate.significant), "test_examples": len(held.seed_scores),
        "exported": exported, "export_refused": refusal, "report": str(report),
        "rollouts": every["rollouts"], "llm_calls": every["llm_calls"],
        "task_calls_made": outcome.task_calls_made,
        "replay_cache_hits": every["replay_cache_hits"], "tokens": every["tokens"],
        "cost_usd": every["cost_usd"], "spent": spent,
        "elapsed_s": round(time.time() - started, 1),
    }


def true_held_out(store: Any, best: Any, settings: DemoSettings, replay: Any,
                  run_id: str) -> dict[str, Any]:
    """The TRUE held-out accuracy of the seed and the best prompts: the world's oracle
    on every distinct recorded question of the held-out test split (the split the
    optimization used), run after the optimization and for the report only."""
    from gepa_trace.demo.agent import AGENT_NAME, SEED_PROMPTS
    from gepa_trace.demo.evaluator import accuracy
    from gepa_trace.replay.dataset import NotEnoughExamples, load_examples

    try:
        test = load_examples(store, AGENT_NAME, filters=replay.filters,
                             fractions=replay.fractions, min_examples=0,
                             need_signal=False).test
    except NotEnoughExamples:
        test = []
    if not test:
        return {"true_seed_test_score": None, "true_best_test_score": None,
                "true_test_questions": 0}
    # Tagged with the run, as its rollouts are: these runs are not production traffic.
    config = {"metadata": {"gepa.run.id": run_id, "gepa.purpose": "true-accuracy"}}
    seed_acc, _ = accuracy(SEED_PROMPTS, test, model=settings.task_lm,
                           threads=settings.workers, config=config)
    best_acc, _ = accuracy(best, test, model=settings.task_lm, threads=settings.workers,
                           config=config)
    return {"true_seed_test_score": seed_acc, "true_best_test_score": best_acc,
            "true_test_questions": len(test)}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The demo's summary as text; its numbers are those of ``summary["spent"]``."""
    label = " (simulated models)" if summary["simulated"] else ""
    refused = summary.get("export_refused") or {}
    not_exported = ("not exported (flagged changes need review: `gepa-trace runs show`)"
                    if refused.get("by") == "review" else "not exported (gain not significant)")
    lines = [f"held-out accuracy, estimated from recorded feedback{label}: "
             f"{_pct(summary['seed_test_score'])} -> {_pct(summary['best_test_score'])}"
             + (f"  gain 95% interval [{summary['ci_low']:+.1%}, {summary['ci_high']:+.1%}]"
                if summary["ci_low"] is not None else "")
             + f" ({summary['test_examples']} test runs with feedback)",
             (f"held-out accuracy, TRUE (the world's answer key, used only to report this)"
             f"{label}: {_pct(summary.get('true_seed_test_score'))} -> "
             f"{_pct(summary.get('true_best_test_score'))} "
             f"({summary.get('true_test_questions', 0)} distinct test questions)"),
             f"validation: {_pct(summary['seed_val_score'])} -> "
             f"{_pct(summary['best_val_score'])}"
             + (f" (grew from {summary['val_size'] - summary['val_grown_by']} to "
                f"{summary['val_size']} examples once solved)"
                if summary.get("val_grown_by") else ""),
             (f"run {summary['run_id']}: {summary['rollouts']} rollouts, "
              f"{summary['llm_calls']} LLM calls sent, {summary['replay_cache_hits']} served by "
              f"the replay cache, ${summary['cost_usd']:.4f}, {summary['elapsed_s']:.0f}s"),
             *(f"  {line}" for line in spend_lines(summary["spent"])[1:]),
             f"prompts: {summary['exported'] or not_exported}",
             f"report:  {summary['report']}"]
    return lines


__all__ = ["DemoSettings", "run_demo", "summary_lines"]
