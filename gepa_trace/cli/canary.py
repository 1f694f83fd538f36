"""`gepa-trace canary status | promote | rollback`: a canary's prompts against
production's, on production feedback.

Thin: parse the options, call ``gepa_trace.prompts.canary`` and the registry, print.
"""

from __future__ import annotations

import click

from gepa_trace.cli.common import (
    handles_errors,
    json_option,
    parse_since,
    print_json,
    store_option,
    who,
)
from gepa_trace.cli.ship import approve_option

_agent = click.option("--agent", required=True, metavar="NAME", help="The agent.")
_canary = click.option("--canary", default="candidate", show_default=True, metavar="ALIAS",
                       help="The alias the canary share of traffic loads.")
_control = click.option("--alias", "control", default="production", show_default=True,
                        metavar="ALIAS", help="The alias the rest of traffic loads.")


@click.group()
def canary() -> None:
    """A canary release: a share of traffic on a candidate alias, judged by feedback.

    \b
    In the agent:   gt.load_prompts(alias="production", canary="candidate",
                                    fraction=0.1, key=user_id)
    Put a version on the canary:  gepa-trace prompts promote answerer 3f2a9c --alias candidate
    Then, any night:              gepa-trace canary status --agent support-agent
    """


def _evidence(store, agent: str, canary: str, control: str) -> dict:
    """The canary's status, recorded with an alias change (empty when there is none to
    compare: e.g. no production alias yet)."""
    from gepa_trace.errors import NotFoundError
    from gepa_trace.prompts.canary import canary_status

    try:
        return canary_status(store, agent, canary=canary, control=control).to_dict()
    except NotFoundError:
        return {}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


@canary.command("status")
@_agent
@_canary
@_control
@click.option("--since", default="30d", show_default=True, metavar="WHEN",
              help="Only runs started since then: 24h, 7d or an ISO date.")
@click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="False-alarm rate over the canary's whole life, however often read.")
@store_option
@json_option
@handles_errors
def canary_status_command(agent: str, canary: str, control: str, since: str, alpha: float,
                          store: str | None, as_json: bool) -> None:
    """Is the canary better or worse than production, for real users?

    Compares the mean feedback score of the runs served by each alias with an interval
    that stays valid however often it is read (a mixture sequential test): read it
    every night, and over the canary's whole life it wrongly says better or worse at
    most --alpha of the time. Each arm needs 30 rated runs before it decides.

    Example: gepa-trace canary status --agent support-agent --since 14d
    """
    from gepa_trace.prompts.canary import canary_status

    status = canary_status(store, agent, canary=canary, control=control,
                           since=parse_since(since), alpha=alpha)
    if as_json:
        print_json(status.to_dict())
        return
    c = status.comparison
    click.echo(f"{canary}: {c.canary_runs} rated runs, mean "
               f"{'-' if c.canary_mean is None else f'{c.canary_mean:.3f}'}")
    click.echo(f"{control}: {c.control_runs} rated runs, mean "
               f"{'-' if c.control_mean is None else f'{c.control_mean:.3f}'}")
    interval = (f" [{_pct(c.low)}, {_pct(c.high)}] at {1 - alpha:.0%}, valid at every look"
                if c.low is not None else "")
    click.echo(f"difference {_pct(c.difference)}{interval}: {c.decision}")
    if status.differing:
        click.echo(f"components that differ: {', '.join(status.differing)}")
    else:
        click.echo("the two aliases serve the same versions (an A/A canary)")
    if status.unassigned_runs:
        click.echo(f"{status.unassigned_runs} run(s) in neither arm (another alias, or no "
                   "prompt version that tells them apart)", err=True)


@canary.command("promote")
@_agent
@_canary
@_control
@approve_option
@store_option
@json_option
@handles_errors
def canary_promote(agent: str, canary: str, control: str, approve: bool, store: str | None,
                   as_json: bool) -> None:
    """Point production at the canary's versions and end the canary.

    Recorded in the alias history with the canary's status as evidence.

    Example: gepa-trace canary promote --agent support-agent
    """
    from gepa_trace.prompts.registry import drop_alias, promote, prompts_for_alias
    from gepa_trace.store import open_store

    st = open_store(store)
    versions = prompts_for_alias(st, canary, agent).versions()
    evidence = _evidence(st, agent, canary, control)
    actor = who("canary promote")
    for component, version in sorted(versions.items()):
        promote(st, component, version, alias=control, approve=approve, actor=actor,
                reason=f"canary {canary} promoted", evidence=evidence)
        drop_alias(st, component, canary, actor=actor, reason=f"canary promoted to {control}")
    if as_json:
        print_json({"agent": agent, "promoted": versions, "alias": control})
        return
    for component, version in sorted(versions.items()):
        click.echo(f"{component}: {control} -> {version} ({canary} removed)")


@canary.command("rollback")
@_agent
@_canary
@store_option
@json_option
@handles_errors
def canary_rollback(agent: str, canary: str, store: str | None, as_json: bool) -> None:
    """End the canary: remove its alias, so all traffic loads production again.

    Recorded in the alias history with the canary's status as evidence.

    Example: gepa-trace canary rollback --agent support-agent
    """
    from gepa_trace.prompts.registry import drop_alias, prompts_for_alias
    from gepa_trace.store import open_store

    st = open_store(store)
    versions = prompts_for_alias(st, canary, agent).versions()
    evidence = _evidence(st, agent, canary, "production")
    dropped = {c: drop_alias(st, c, canary, actor=who("canary rollback"),
                             reason="canary rolled back", evidence=evidence)
               for c in sorted(versions)}
    if as_json:
        print_json({"agent": agent, "removed": dropped, "alias": canary})
        return
    for component, version in dropped.items():
        click.echo(f"{component}: {canary} ({version}) removed")


@click.command()
@_agent
@_canary
@_control
@click.option("--alpha", default=0.05, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="False-alarm rate of each comparison, however often it is read.")
@click.option("--dry-run", is_flag=True, help="Say what the policy would do; change nothing.")
@store_option
@json_option
@handles_errors
def watch(agent: str, canary: str, control: str, alpha: float, dry_run: bool,
          store: str | None, as_json: bool) -> None:
    """The nightly policy: promote a canary that production feedback finds better, roll
    back one it finds worse, and roll back a fresh promotion that made things worse.

    Each comparison is the sequential test of `canary status` (valid read every night,
    at least 30 rated runs per arm). A fresh promotion (production changed in the last
    14 days) is compared before/after the change. Every action is in `gepa-trace
    prompts history` with its numbers; undo one with `gepa-trace prompts revert ID`.

    Example: gepa-trace watch --agent support-agent
    """
    from gepa_trace.prompts.policy import run_policy
    from gepa_trace.store import open_store

    actions = run_policy(open_store(store), agent, canary=canary, control=control,
                         alpha=alpha, dry_run=dry_run)
    if as_json:
        print_json({"agent": agent, "dry_run": dry_run,
                    "actions": [a.to_dict() for a in actions]})
        return
    if not actions:
        click.echo(f"nothing to judge for {agent}: no canary and no fresh promotion")
    for action in actions:
        c = action.comparison
        figures = (f" (difference {_pct(c.get('difference'))}, interval "
                   f"[{_pct(c.get('low'))}, {_pct(c.get('high'))}], "
                   f"{c.get('canary_runs')} vs {c.get('control_runs')} rated runs)"
                   if c.get("low") is not None else "")
        verb = "would " if dry_run and action.kind != "none" else ""
        click.echo(f"{verb}{action.kind}: {action.reason}{figures}")
