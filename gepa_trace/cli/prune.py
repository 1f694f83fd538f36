"""`gepa-trace prune`: delete old production traces and old rollout spans."""

from __future__ import annotations

import contextlib
import os
import time

import click

from gepa_trace.cli.common import (
    handles_errors,
    json_option,
    parse_since,
    print_json,
    progress,
    store_option,
)


@click.command()
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Delete production traces whose root started before then: a duration "
                   "like 30d/12h or an ISO date (same forms as traces --since).")
@click.option("--agent", default=None, metavar="NAME", help="Only this agent's traces and runs.")
@click.option("--keep-feedback", is_flag=True,
              help="Keep every trace that has feedback, whole (default: deleted with it).")
@click.option("--rollouts-older-than", "rollouts_older_than", default=None, metavar="AGE",
              help="Drop the rollout spans of finished runs that finished before then "
                   "(default: --older-than). The runs' rows stay.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--no-vacuum", is_flag=True,
              help="SQLite: do not VACUUM afterwards (VACUUM needs free disk space about "
                   "the size of the database and locks it while it runs).")
@store_option
@json_option
@handles_errors
def prune(older_than: str, agent: str | None, keep_feedback: bool,
          rollouts_older_than: str | None, dry_run: bool, no_vacuum: bool,
          store: str | None, as_json: bool) -> None:
    """Delete old production traces and their feedback, and old rollout spans.

    Never deleted: the examples of a run that is not finished and of each agent's
    newest finished run, traces marked golden or excluded (and their marks), and
    optimization runs, candidates, evaluations, prompt versions and aliases (prune
    never deletes from those tables). On SQLite the space is reclaimed afterwards
    (incremental vacuum if the file is in auto_vacuum=INCREMENTAL mode, else VACUUM);
    on PostgreSQL autovacuum reclaims it.

    \b
    Examples:
      gepa-trace prune --older-than 30d --dry-run
      gepa-trace prune --older-than 30d --rollouts-older-than 7d --keep-feedback --json
    """
    from gepa_trace.store import open_store
    from gepa_trace.store.prune import prune as run_prune

    now = time.time()
    cutoff = parse_since(older_than, now=now)  # a bad duration fails before any I/O
    rollout_cutoff = parse_since(rollouts_older_than, now=now)
    st = open_store(store)
    with contextlib.ExitStack() as held:
        if not dry_run:
            _lock_agents(st, agent, held)
        counts = run_prune(st, cutoff_s=cutoff, rollout_cutoff_s=rollout_cutoff,
                           agent=agent, keep_feedback=keep_feedback, dry_run=dry_run,
                           vacuum=not no_vacuum, progress=progress)
    if as_json:
        print_json(counts.as_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb}: {counts.traces} traces ({counts.spans} spans), {counts.feedback} "
               f"feedback records, {counts.rollout_spans} rollout spans of "
               f"{counts.rollout_runs} finished runs; ~{counts.payload_bytes / 1e6:.1f} MB "
               f"of span text; kept {counts.kept_traces} old traces that something "
               "refers to")
    if counts.bytes_before is not None and counts.bytes_after is not None and not dry_run:
        click.echo(f"store file: {counts.bytes_before / 1e6:.1f} MB -> "
                   f"{counts.bytes_after / 1e6:.1f} MB")


def _lock_agents(store, agent: str | None, held: contextlib.ExitStack) -> None:
    """Hold the run lock of every agent prune may touch, as an optimization does: prune
    decides once what a run refers to, so no optimization may start (or be running, exit
    5) while it deletes."""
    from gepa_trace.optimizer import OptimizerConfig
    from gepa_trace.optimizer.lock import RunLock
    from gepa_trace.store.prune import recorded_agents

    agents = [agent] if agent is not None else recorded_agents(store)
    run_id = f"prune-{os.getpid()}"
    for name in agents:
        lock = RunLock(store, name, run_id, OptimizerConfig().lock_stale_seconds)
        lock.acquire()
        held.callback(lock.release)
