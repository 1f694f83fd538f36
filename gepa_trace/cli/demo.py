"""`gepa-trace demo`: the whole cycle on the example agent."""

from __future__ import annotations

import os
from pathlib import Path

import click

from gepa_trace.cli.common import (
    handles_errors,
    inherit_store,
    json_option,
    print_json,
    progress,
)


@click.command()
@click.option("--store", default=None, metavar="URL", callback=inherit_store,
              help="Store URL, created if missing (default: sqlite:///<out>/demo.db).")
@click.option("--out", "out_dir", default="gepa-demo", show_default=True,
              type=click.Path(file_okay=False), help="Where prompts.json and report.html go.")
@click.option("--runs", type=click.IntRange(min=20), default=500, show_default=True,
              help="Production runs to record before optimizing.")
@click.option("--budget-rollouts", type=click.IntRange(min=10), default=1500, show_default=True,
              help="Rollouts (agent runs on one example) the optimization may spend.")
@click.option("--workers", type=click.IntRange(min=1, max=64), default=4, show_default=True,
              help="Rollouts evaluated at once (threads in each process).")
@click.option("--processes", type=click.IntRange(min=1, max=64), default=None,
              help="Run rollouts in this many worker processes [default: 2 on a machine "
                   "with 2 or more cores, else 1].")
@click.option("--task-lm", default="gepa-sim/task", show_default=True, metavar="MODEL",
              help="The agent's model (a litellm model string).")
@click.option("--reflection-lm", default="gepa-sim/reflect", show_default=True,
              metavar="MODEL", help="The reflection model.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the recorded traffic and of the optimizer.")
@click.option("--warm-start", is_flag=True, help="Start from the latest run's fronts.")
@json_option
@handles_errors
def demo(store: str | None, out_dir: str, runs: int, budget_rollouts: int, workers: int,
         processes: int | None, task_lm: str, reflection_lm: str, seed: int, warm_start: bool,
         as_json: bool) -> None:
    """Run the whole cycle on the example agent, offline, on SQLite.

    Records production traffic of a multi-hop QA agent with user feedback, optimizes
    its three prompts from those traces with GEPA and the built-in feedback metric
    (the recorded feedback only), measures the held-out gain with a bootstrap
    interval, exports prompts.json if the gain is significant and writes report.html.
    Afterwards the simulated world's answer key reports the TRUE held-out accuracy
    beside the feedback-estimated one. With real model strings (--task-lm openai/gpt-4.1-mini
    --reflection-lm openai/gpt-4.1) the same cycle runs against real providers.

    \b
    Example:
      gepa-trace demo --runs 500 --out gepa-demo
    """
    from gepa_trace.cli.optimize import ProgressDisplay
    from gepa_trace.demo.cycle import DemoSettings, run_demo, summary_lines

    if processes is None:
        processes = 2 if (os.cpu_count() or 1) >= 2 else 1
    settings = DemoSettings(store=store, out_dir=Path(out_dir), runs=runs,
                            task_lm=task_lm, reflection_lm=reflection_lm,
                            budget_rollouts=budget_rollouts, workers=workers,
                            processes=processes, seed=seed, warm_start=warm_start,
                            progress=progress)
    summary = run_demo(settings, callbacks=[ProgressDisplay(budget_rollouts)])
    if as_json:
        print_json(summary)
    else:
        for line in summary_lines(summary):
            click.echo(line)
