"""`gepa-trace versions`: how each prompt version did with real users.

Thin: parse the options, call ``gepa_trace.prompts.production.version_figures``, print.
"""

from __future__ import annotations

import click

from gepa_trace.cli.common import (
    handles_errors,
    json_option,
    parse_since,
    print_json,
    store_option,
)
from gepa_trace.cli.traces import _table, _when


def _score(figures) -> str:
    score = figures.score
    if score.mean is None:
        return "-"
    if score.low is None:
        return f"{score.mean:.2f}"
    return f"{score.mean:.2f} [{score.low:.2f}, {score.high:.2f}]"


def _money(usd: float | None) -> str:
    return "?" if usd is None else f"${usd:.4f}"


@click.command()
@click.option("--agent", required=True, metavar="NAME", help="The agent whose runs to read.")
@click.option("--component", default=None, metavar="NAME", help="Only this component.")
@click.option("--since", default="14d", show_default=True, metavar="WHEN",
              help="Only runs started since then: 24h, 7d or an ISO date.")
@click.option("--until", default=None, metavar="WHEN", help="Only runs started before then.")
@store_option
@json_option
@handles_errors
def versions(agent: str, component: str | None, since: str, until: str | None,
             store: str | None, as_json: bool) -> None:
    """Each prompt version seen in production, with how it did.

    For each version of each component in the agent's recorded runs (the optimizer's
    rollouts are left out): its runs, the share of them with feedback, the mean
    feedback score with a 95% interval, cost and latency per run, when it was first
    and last seen, the optimization run that produced it and the aliases serving it.

    \b
    Examples:
      gepa-trace versions --agent support-agent
      gepa-trace versions --agent support-agent --component answer --since 30d --json
    """
    from gepa_trace.prompts.production import version_figures

    found = version_figures(store, agent, component=component, since=parse_since(since),
                            until=parse_since(until))
    if as_json:
        print_json([f.to_dict() for f in found])
        return
    if not found:
        click.echo(f"no production runs of agent {agent} with a prompt version since {since}",
                   err=True)
        return
    rows = []
    for f in found:
        made = (f"run {f.produced_by_run} #{f.produced_by_candidate}" if f.produced_by_run
                else f.origin or "-")
        rows.append([f.component, (f.version or "(none)")[:12], str(f.runs),
                     f"{f.feedback_share:.0%}", _score(f), _money(f.cost_per_run_usd),
                     f"{f.latency_ms_p50:.0f} ms", _when(f.first_seen), _when(f.last_seen),
                     made, ",".join(f.aliases) or "-"])
    _table(["component", "version", "runs", "feedback", "score [95%]", "cost/run",
            "p50 latency", "first seen", "last seen", "made by", "aliases"], rows)
