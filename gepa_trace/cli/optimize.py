"""`gepa-trace optimize` and `gepa-trace runs`: the GEPA loop from production traces."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any

import click

from gepa_trace.cli.common import (
    handles_errors,
    json_option,
    print_json,
    progress,
    store_option,
)
from gepa_trace.cli.examples import (
    example_filter,
    golden_option,
    max_user_share_option,
    source_weight_option,
    source_weights,
    split_fractions,
)
from gepa_trace.cli.ship import allow_option


class ProgressDisplay:
    """Live progress on stderr: one line rewritten in place on a terminal, a line per
    validated candidate (and every 10 s) otherwise."""

    def __init__(self, max_rollouts: int | None, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.max_rollouts = max_rollouts
        self.iteration = 0
        self.best: float | None = None
        self.spent: dict[str, Any] = {}
        self.cache_hits = 0
        self._last = 0.0

    def _line(self) -> str:
        rollouts = self.spent.get("rollouts", 0)
        limit = f"/{self.max_rollouts}" if self.max_rollouts else ""
        best = "-" if self.best is None else f"{self.best:.3f}"
        return (f"iteration {self.iteration:>3}  best val {best}  rollouts {rollouts}{limit}  "
                f"llm calls {self.spent.get('llm_calls', 0)}  "
                f"${self.spent.get('cost_usd', 0.0):.4f}  {self.spent.get('seconds', 0):.0f}s")

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + self._line())
            self.stream.flush()
        elif force or now - self._last > 10:
            self.stream.write(self._line() + "\n")
            self.stream.flush()
        self._last = now

    def on_iteration_started(self, event) -> None:
        self.iteration = event.iteration
        self._show()

    def on_candidate_validated(self, event) -> None:
        changed = self.best is None or event.best_score != self.best
        self.best = event.best_score
        self._show(force=changed)

    def on_validation_grown(self, event) -> None:
        self.best = event.best_score
        if self.tty:
            self.stream.write("\n")
        self.stream.write(f"validation solved by candidate {event.solved_by}: grew by "
                          f"{event.added} training examples to {event.size}, best "
                          f"{event.best_score:.3f}\n")
        self._show(force=True)

    def on_budget_spent(self, event) -> None:
        self.spent = {"rollouts": event.rollouts, "llm_calls": event.llm_calls,
                      "cost_usd": event.cost_usd, "seconds": event.seconds}
        self._show()

    def on_run_stopped(self, event) -> None:
        if self.tty:
            self.stream.write("\n")
        self.stream.write(f"stopped: {event.reason}\n")
        self.stream.flush()


def _when(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _errors_line(errors: dict[str, Any]) -> str:
    """Failed rollouts, retries and the first error: printed for every run, so a run
    whose rollouts failed never reads as a clean one."""
    line = (f"errors      {errors.get('evaluator_errors', 0)} failed rollouts, "
            f"{errors.get('rollout_retries', 0)} retries, "
            f"{errors.get('reflection_errors', 0)} failed reflections")
    first = errors.get("first_error")
    return line + (f"; first: {first}" if first else "")


def print_spent(spent: dict[str, Any]) -> None:
    """What the command spent (``run_spend``'s block), as `optimize` and `runs show`
    print it."""
    from gepa_trace.optimizer.result import spend_lines

    for i, line in enumerate(spend_lines(spent)):
        click.echo(("spent       " if i == 0 else "            ") + line)


def print_outcome(summary: dict[str, Any]) -> None:
    """The human summary of an optimization (stdout). Works for a run that failed
    before any candidate was validated (scores None), and always shows its errors."""
    held = summary.get("held_out") or {}
    gate = held.get("gate")
    click.echo(f"run {summary['run_id']}  agent {summary['agent']}  "
               f"({summary['stop_reason']})")
    if summary.get("failed_with"):
        click.echo(f"FAILED      {summary['failed_with']}")
    grown = summary.get("val_grown_by") or 0
    click.echo(f"validation  seed {_score(summary['seed_val_score'])} -> best "
               f"{_score(summary['best_val_score'])} (candidate "
               f"{summary['best_candidate_id']} of {summary['candidates']}, "
               f"{summary['iterations']} iterations)")
    if grown:
        size = summary["val_size"]
        click.echo(f"            validation grew from {size - grown} to {size} examples once "
                   f"solved; the seed's score is on the first {size - grown}")
    if summary.get("val_optimistic"):
        from gepa_trace.optimizer.config import OPTIMISTIC_VAL

        click.echo(f"            {OPTIMISTIC_VAL}")
    if held.get("failed") or held.get("skipped"):
        what = "FAILED" if held.get("failed") else "skipped"
        click.echo(f"held-out    {what}: {held.get('failed') or held.get('skipped')} "
                   "(no verdict; export has no gate to pass)")
    if gate:
        click.echo(f"held-out    seed {gate['seed_mean']:.3f} -> best {gate['best_mean']:.3f}  "
                   f"gain {gate['gain']:+.3f}  {gate['confidence']:.0%} interval "
                   f"[{gate['ci_low']:+.3f}, {gate['ci_high']:+.3f}]  n={gate['n']}  "
                   + ("significant" if gate["significant"] else "NOT significant"))
    click.echo(_errors_line(summary.get("errors") or {}))
    from gepa_trace.prompts.seed import seed_lines

    for line in seed_lines(summary.get("seed_sources")):
        click.echo(line)
    from gepa_trace.optimizer.result import run_spend

    print_spent(summary.get("spent") or run_spend(summary.get("totals")))
    for component, version in summary["best_prompts"].items():
        click.echo(f"  {component:<20} {version}")


def dataset_trust_lines(dataset: Any, max_user_share: float) -> list[str]:
    """Users over ``max_user_share`` of the examples, and one line for any comments
    repeated verbatim (`gepa-trace examples` lists each)."""
    lines = [u.line() for u in dataset.user_shares(max_user_share)]
    repeated = dataset.repeated_comments
    if repeated:
        lines.append(f"{len(repeated)} comment(s) repeated verbatim across runs, the first: "
                     f"{repeated[0].line()}; `gepa-trace examples` lists them")
    return lines


@click.command()
@click.option("--agent", default=None,
              help="The agent whose recorded runs to learn from (required unless --resume).")
@click.option("--entrypoint", default=None, metavar="MODULE:FUNCTION",
              help="build_agent(prompts) -> Runnable; without it, log-only replay. The "
                   "module is imported from the working directory first (see --app-dir).")
@click.option("--metric", default="feedback", show_default=True, metavar="NAME|MODULE:FN",
              help="feedback (expected-answer match where the feedback gives one, else "
                   "a judge reading the recorded feedback; its judge: --judge-lm, else the "
                   "reflection LM, gepa-sim/reflect -> gepa-sim/judge), exact_match, "
                   "contains, judge (with --rubric), or metric(example, output, trace) -> "
                   "float | Score in [0, 1].")
@click.option("--app-dir", default=None, metavar="DIR",
              type=click.Path(exists=True, file_okay=False),
              help="Import --entrypoint and --metric modules from DIR first (default: the "
                   "working directory), here and in worker processes.")
@click.option("--reflection-lm", default=None, metavar="MODEL",
              help="litellm model string of the reflection LM (gepa-sim/reflect offline); "
                   "required unless --resume.")
@click.option("--reflection-lm-base", default=None, metavar="URL",
              help="api_base of an OpenAI-compatible server for --reflection-lm (e.g. "
                   "http://127.0.0.1:8000/v1 with openai/MODEL); the key comes from the "
                   "provider's variable (OPENAI_API_KEY for openai/...).")
@click.option("--task-lm", default=None, metavar="MODEL",
              help="Model the agent (build_agent(prompts, model=...)) or log-only replay "
                   "calls instead of the recorded one.")
@click.option("--task-lm-base", default=None, metavar="URL",
              help="api_base for --task-lm (passed to build_agent as api_base= when it takes "
                   "that keyword); key from the provider's variable (OPENAI_API_KEY for "
                   "openai/...).")
@click.option("--judge-lm", default=None, metavar="MODEL",
              help="Model of the judge: for --metric feedback default the reflection LM "
                   "(gepa-sim/reflect -> gepa-sim/judge); for --metric judge and log-only "
                   "replay default --task-lm.")
@click.option("--judge-lm-base", default=None, metavar="URL",
              help="api_base for --judge-lm; key from the provider's variable "
                   "(OPENAI_API_KEY for openai/...).")
@click.option("--rubric", default=None, help="The judge's rubric.")
@click.option("--budget-rollouts", type=click.IntRange(min=1), default=300, show_default=True,
              help="Stop after this many rollouts (agent runs on one example).")
@click.option("--max-llm-calls", type=click.IntRange(min=1), default=None,
              help="Stop after this many LLM calls (task, judge and reflection).")
@click.option("--max-cost", "max_cost", type=click.FloatRange(min=0), default=None,
              metavar="USD", help="Stop once this many dollars are spent (litellm prices).")
@click.option("--max-time", "max_seconds", type=click.FloatRange(min=1), default=None,
              metavar="SECONDS", help="Stop after this much wall time.")
@click.option("--held-out-share", type=click.FloatRange(min=0, max=0.9), default=0.3,
              show_default=True,
              help="Share of --max-llm-calls, --max-cost and --max-time the search leaves "
                   "for the held-out test (--budget-rollouts counts the search alone); a "
                   "test that would not fit is skipped before it spends anything.")
@click.option("--workers", type=click.IntRange(min=1, max=64), default=4, show_default=True,
              help="Rollouts run at once (results do not depend on it).")
@click.option("--processes", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="Run rollouts in this many worker processes, each with --workers "
                   "threads (an agent's Python runs on more than one core); needs "
                   "--entrypoint.")
@click.option("--lookahead", type=click.IntRange(min=1, max=64), default=None,
              help="Reflection iterations run at once, each on the guess that the ones "
                   "before it are rejected; the choices are those of the one-at-a-time "
                   "loop, a wrong guess costs its rollouts. 1: one at a time. Default: 1 "
                   "with --budget-rollouts of at most 300, else 4.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of every random choice (runs with the same seed choose the same).")
@click.option("--since", default=None, help="Only runs since then: 24h, 7d or an ISO date.")
@click.option("--until", default=None, help="Only runs before then.")
@click.option("--with-feedback", is_flag=True, help="Only runs that have feedback.")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="At most this many examples.")
@golden_option
@source_weight_option
@max_user_share_option
@click.option("--split", default=None, metavar="TRAIN,VAL,TEST",
              help="Shares of train/validation/held-out test (default 0.5,0.1,0.4).")
@click.option("--no-replay-cache", is_flag=True,
              help="Send every LLM call, even one already recorded.")
@click.option("--no-recorded-runs", is_flag=True,
              help="Run the seed on every example, instead of reading what production "
                   "recorded for the prompts it ran (free: no rollout of the budget).")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Stop after this many iterations without a new best.")
@click.option("--stop-file", default=None, help="Stop cleanly once this file exists.")
@click.option("--no-grow-val", is_flag=True,
              help="Stop once validation is solved, instead of growing it with "
                   "training examples while budget is left.")
@click.option("--val-start", type=click.IntRange(min=1), default=None,
              help="Validate on only this many validation examples at first; the "
                   "rest join when they are solved (default: all).")
@click.option("--resume", "resume", default=None, metavar="RUN_ID",
              help="Continue a stored run that was stopped, failed or killed, with the "
                   "options it was started with; options given again replace them (a "
                   "note says so). A finished run is reported and left unchanged.")
@click.option("--warm-start", is_flag=True,
              help="Start from the fronts of this agent's latest run (nightly runs).")
@store_option
@json_option
@handles_errors
def optimize(agent: str, entrypoint: str | None, metric: str, app_dir: str | None,
             reflection_lm: str, reflection_lm_base: str | None, task_lm: str | None,
             task_lm_base: str | None, judge_lm: str | None, judge_lm_base: str | None,
             rubric: str | None,
             budget_rollouts: int, max_llm_calls: int | None, max_cost: float | None,
             max_seconds: float | None, held_out_share: float, workers: int, processes: int,
             lookahead: int | None, seed: int,
             since: str | None, until: str | None, with_feedback: bool, sample: int | None,
             golden_file: str | None, source_weight: tuple[str, ...], max_user_share: float,
             split: str | None, no_replay_cache: bool, no_recorded_runs: bool,
             patience: int | None, stop_file: str | None, no_grow_val: bool,
             val_start: int | None, resume: str | None, warm_start: bool, store: str | None,
             as_json: bool) -> None:
    """Optimize an agent's prompts from its recorded runs with GEPA.

    Examples are the agent's production runs and their feedback; each rollout replays
    the agent (--entrypoint) with candidate prompts, and recorded LLM calls are served
    from the store. Progress goes to stderr, the summary to stdout.

    Before the loop, a preflight runs one seed rollout and one call to each model; if
    one fails the command stops at once with one line naming the cause.

    \b
    Exit codes: 0 done; 6 preflight failed (entry point, metric or a model does not
    work); 7 rollouts kept failing (the run is kept: fix it, then --resume RUN_ID) or
    the held-out test failed; see `gepa-trace --help` for the others.

    \b
    Example:
      gepa-trace optimize --agent demo-qa --entrypoint gepa_trace.demo:build_agent \\
          --metric gepa_trace.demo:metric --reflection-lm gepa-sim/reflect \\
          --budget-rollouts 600 --since 7d
    """
    from gepa_trace.cli import resume as resuming

    ctx = click.get_current_context()
    if resume:
        try:
            params, notes = resuming.resumed_params(ctx, dict(ctx.params), store, resume)
        except resuming.FinishedRun as finished:
            progress(resuming.finished_message(finished.row))
            if as_json:
                print_json({"run_id": finished.row.id, "status": finished.row.status,
                            "stop_reason": finished.row.stop_reason})
            return
        for note in notes:
            progress(f"note: {note}")
        params.pop("resume", None)
        return ctx.invoke(_optimize, **params, resume=resume)
    return ctx.invoke(_optimize, **ctx.params)


def _optimize(agent: str | None, entrypoint: str | None, metric: str, app_dir: str | None,
              reflection_lm: str | None, reflection_lm_base: str | None, task_lm: str | None,
              task_lm_base: str | None, judge_lm: str | None, judge_lm_base: str | None,
              rubric: str | None,
              budget_rollouts: int, max_llm_calls: int | None, max_cost: float | None,
              max_seconds: float | None, held_out_share: float, workers: int, processes: int,
              lookahead: int | None, seed: int,
              since: str | None, until: str | None, with_feedback: bool,
              sample: int | None, golden_file: str | None, source_weight: tuple[str, ...],
              max_user_share: float, split: str | None, no_replay_cache: bool,
              no_recorded_runs: bool, patience: int | None, stop_file: str | None,
              no_grow_val: bool, val_start: int | None, resume: str | None, warm_start: bool,
              store: str | None, as_json: bool) -> None:
    """The optimize command once its options are settled (given, or stored with the run)."""
    from gepa_trace.cli.resume import recorded

    command = recorded(dict(locals()))  # first, while locals() holds only the options
    from gepa_trace.lm.budget import Budget
    from gepa_trace.optimizer import OptimizerConfig
    from gepa_trace.replay import ReplaySettings
    from gepa_trace.replay import optimize as run_optimize

    for name, value in (("--agent", agent), ("--reflection-lm", reflection_lm)):
        if not value:
            raise click.UsageError(f"Missing option '{name}' (needed unless --resume "
                                   "RUN_ID).")

    fractions = split_fractions(split, "--split")
    settings = ReplaySettings(
        entrypoint=entrypoint, metric=metric, task_lm=task_lm, judge_lm=judge_lm,
        task_lm_base=task_lm_base, judge_lm_base=judge_lm_base,
        reflection_lm_base=reflection_lm_base, app_dir=app_dir,
        rubric=rubric, replay_cache=not no_replay_cache,
        recorded_runs=not no_recorded_runs, fractions=fractions,
        processes=processes, held_out_share=held_out_share,
        filters=example_filter(since, until, with_feedback, sample, golden_file),
        source_weights=source_weights(source_weight))
    budget = Budget(max_rollouts=budget_rollouts, max_llm_calls=max_llm_calls,
                    max_cost_usd=max_cost, max_seconds=max_seconds)
    config = OptimizerConfig(seed=seed, workers=workers, lookahead=lookahead,
                             patience=patience, stop_file=stop_file, grow_val=not no_grow_val,
                             val_start=val_start, max_user_share=max_user_share,
                             command=command)
    display = ProgressDisplay(budget_rollouts)
    progress(f"optimizing {agent} (budget {budget!r}, {workers} workers"
             + (f" in {processes} processes)" if processes > 1 else ")"))
    from gepa_trace.errors import RolloutsFailed
    from gepa_trace.store.engine import forget_store, resolve_url

    try:
        outcome = run_optimize(agent, reflection_lm=reflection_lm, entrypoint=entrypoint,
                               metric=metric, budget=budget, store=store, settings=settings,
                               config=config, resume=resume, warm_start=warm_start,
                               callbacks=[display])
    except RolloutsFailed as exc:
        # a failed run still says what it had, its errors and what it spent, on stdout
        # as a finished one does; then the error line on stderr and exit code 7
        stopped = getattr(exc, "outcome", None)
        if stopped is not None and as_json:
            print_json(stopped.summary())
        elif stopped is not None:
            print_outcome(stopped.summary())
        raise
    finally:
        # Closing every connection lets SQLite fold its -wal file back into the database
        # and remove it (and -shm): a command leaves no new file beside the store.
        forget_store(resolve_url(store))
    for line in dataset_trust_lines(outcome.dataset, max_user_share):
        progress(line)
    summary = outcome.summary()
    if as_json:
        print_json(summary)
    else:
        print_outcome(summary)
    if outcome.held_out.failed:
        raise RolloutsFailed(f"run {outcome.run_id}: the held-out test failed: "
                             f"{outcome.held_out.failed}")


@click.group(invoke_without_command=True)
@click.option("--agent", default=None, help="Only this agent's runs.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Show at most this many runs.")
@store_option
@json_option
@click.pass_context
@handles_errors
def runs(ctx: click.Context, agent: str | None, limit: int, store: str | None,
         as_json: bool) -> None:
    """List optimization runs, newest first; `runs show RUN_ID` for one.

    \b
    Examples:
      gepa-trace runs --agent demo-qa
      gepa-trace runs show run-20261125-212120-249963 --json
    """
    ctx.ensure_object(dict)
    ctx.obj["store"] = store
    if ctx.invoked_subcommand is not None:
        return
    from gepa_trace.replay.runs import list_runs

    rows = list_runs(store, agent=agent, limit=limit)
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no optimization runs", err=True)
        return
    for r in rows:
        best = "-" if r["best_val_score"] is None else f"{r['best_val_score']:.3f}"
        click.echo(f"{r['id']:<30} {r['agent']:<16} {r['status']:<9} {_when(r['started_at'])}  "
                   f"best val {best}  rollouts {r['rollouts']}  {r['stop_reason'] or ''}")


@runs.command("show")
@click.argument("run_id")
@allow_option
@store_option
@json_option
@click.pass_context
@handles_errors
def runs_show(ctx: click.Context, run_id: str, allow: tuple[str, ...], store: str | None,
              as_json: bool) -> None:
    """One run: fronts per component, the best candidate, the diagnoses in order, and
    the review's flagged changes with their evidence (which need --approve to export).

    Example: gepa-trace runs show run-20261125-212120-249963
    """
    from gepa_trace.optimizer.config import OPTIMISTIC_VAL, val_is_optimistic
    from gepa_trace.optimizer.state import UNJUDGED
    from gepa_trace.prompts.review import Allow, review_run
    from gepa_trace.replay.runs import describe_run
    from gepa_trace.report.review import review_lines
    from gepa_trace.store import open_store

    st = open_store(store or (ctx.obj or {}).get("store"))
    info = describe_run(st, run_id)
    review = review_run(st, run_id, allow=Allow.load(allow))
    if as_json:
        print_json({**info, "val_optimistic": val_is_optimistic(info["config"]),
                    "review": review.to_dict()})
        return
    click.echo(f"run {info['id']}  agent {info['agent']}  {info['status']}  "
               f"({info['stop_reason'] or 'running'})")
    totals = info.get("totals") or {}
    if info["status"] == "failed" or totals.get("evaluator_errors") or totals.get(
            "first_error"):
        click.echo(_errors_line(totals))
    print_spent(info["spent"])
    from gepa_trace.prompts.seed import seed_lines

    for line in seed_lines(totals.get("seed_sources")):
        click.echo(line)
    best = info["best"]
    if best:
        click.echo(f"best candidate {best['id']}  val {_score(best['val_score'])}")
        if val_is_optimistic(info["config"]):
            click.echo(f"  {OPTIMISTIC_VAL}")
        for component, version in best["prompts"].items():
            click.echo(f"  {component:<20} {version}")
    held = totals.get("held_out") or {}
    if held.get("failed") or held.get("skipped"):
        click.echo(f"held-out {'FAILED' if held.get('failed') else 'skipped'}: "
                   f"{held.get('failed') or held.get('skipped')}")
    if held.get("gate"):
        g = held["gate"]
        click.echo(f"held-out gain {g['gain']:+.3f}  interval [{g['ci_low']:+.3f}, "
                   f"{g['ci_high']:+.3f}]  n={g['n']}")
    for line in review_lines(review):
        click.echo(line)
    click.echo("fronts:")
    for component, versions in info["fronts"].items():
        click.echo(f"  {component:<20} {', '.join(versions)}")
    click.echo("diagnoses:")
    ahead = [d for d in info["diagnoses"] if d["status"] in UNJUDGED]
    for d in info["diagnoses"]:
        if d["status"] in UNJUDGED:
            continue
        status = d["status"]
        score = "" if d["val_score"] is None else f" val {d['val_score']:.3f}"
        click.echo(f"  [{d['iteration']}] candidate {d['id']} ({d['component']}, {status}{score})")
        for line in (d["diagnosis"] or "").strip().splitlines()[:6]:
            click.echo(f"      {line}")
    if ahead:
        click.echo(f"  ({len(ahead)} children proposed ahead and never judged are not listed; "
                   "--json has them)")
