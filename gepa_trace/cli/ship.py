"""`gepa-trace export`, `prompts` and `report`: getting improved prompts to deployment."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from gepa_trace.cli.blame import prompts_blame
from gepa_trace.cli.common import handles_errors, json_option, print_json, store_option, who


def _when(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M")


approve_option = click.option(
    "--approve", is_flag=True,
    help="Go ahead although the review flagged changes (records the approval).")
allow_option = click.option(
    "--allow", "allow", multiple=True, metavar="VALUE",
    help="Allow a domain, e-mail domain, phone number or phrase in the review "
         "(repeatable; also GEPA_TRACE_REVIEW_ALLOW and gepa-trace-review.yaml).")


def _say_approved(flags: list) -> None:
    """List approved flagged changes on stderr, one line each."""
    for f in flags:
        click.echo(f"approved: {f.kind} {f.text!r} in {f.component} (candidate "
                   f"{f.candidate_id}), {f.evidence()}", err=True)


@click.group()
def prompts() -> None:
    """Prompt versions in the store and their aliases.

    \b
    Examples:
      gepa-trace prompts ls --component answerer
      gepa-trace prompts promote answerer 3f2a9c --alias production
      gepa-trace prompts diff 3f2a9c 81be07
    """


prompts.add_command(prompts_blame)


@prompts.command("ls")
@click.option("--component", default=None, help="Only this component.")
@click.option("--agent", default=None, help="Only this agent's components.")
@store_option
@json_option
@handles_errors
def prompts_ls(component: str | None, agent: str | None, store: str | None,
               as_json: bool) -> None:
    """List prompt versions, newest first, with origin and aliases.

    Example: gepa-trace prompts ls --agent support-agent --json
    """
    from gepa_trace.prompts.registry import list_versions
    from gepa_trace.store import open_store

    versions = list_versions(open_store(store), component=component, agent=agent)
    if as_json:
        print_json([v.to_dict() for v in versions])
        return
    if not versions:
        click.echo("no prompt versions recorded", err=True)
        return
    for v in versions:
        aliases = f"  [{', '.join(v.aliases)}]" if v.aliases else ""
        first = v.messages[0].get("content", "")[:60].replace("\n", " ")
        click.echo(f"{v.component:<20} {v.version}  {v.origin:<12} {_when(v.first_seen)}"
                   f"{aliases}  {first}")


@prompts.command("promote")
@click.argument("component")
@click.argument("version")
@click.option("--alias", default="production", show_default=True,
              help="The alias to point at VERSION.")
@approve_option
@allow_option
@store_option
@json_option
@handles_errors
def prompts_promote(component: str, version: str, alias: str, approve: bool,
                    allow: tuple[str, ...], store: str | None, as_json: bool) -> None:
    """Point an alias (default: production) of COMPONENT at VERSION.

    A version an optimization produced is reviewed first: if its changes are flagged
    (a new URL, text copied from a few users' traces, ...), it is promoted only with
    --approve or an approval already recorded (exit code 8 otherwise).

    Example: gepa-trace prompts promote answerer 3f2a9c --alias production
    """
    from gepa_trace.prompts.registry import get_version, promote
    from gepa_trace.prompts.review import Allow, review_run
    from gepa_trace.store import open_store

    st = open_store(store)
    stored = get_version(st, version, component)
    review = (review_run(st, stored.run_id, allow=Allow.load(allow))
              if stored.run_id is not None and stored.origin == "optimization" else None)
    found = promote(st, component, stored.version, alias=alias, approve=approve,
                    review=review, actor=who("prompts promote"))
    flags = review.flags_of_version(component, found.version) if review else []
    _say_approved(flags)
    if as_json:
        print_json({"component": component, "alias": alias, "version": found.version,
                    "flags": [f.to_dict() for f in flags]})
    else:
        click.echo(f"{component}: {alias} -> {found.version}")


@prompts.command("history")
@click.argument("alias", required=False)
@click.option("--component", default=None, metavar="NAME", help="Only this component.")
@click.option("--agent", default=None, metavar="NAME",
              help="Only components with a version recorded for this agent.")
@store_option
@json_option
@handles_errors
def prompts_history(alias: str | None, component: str | None, agent: str | None,
                    store: str | None, as_json: bool) -> None:
    """Every change of an alias (all aliases without ALIAS), oldest first.

    Each change is kept as it was made: the version before and after, who or what made
    it (a person via a command, an export, a canary promotion or rollback), when, why,
    and the figures it acted on (--json).

    Example: gepa-trace prompts history production --component answerer
    """
    from gepa_trace.prompts.registry import alias_history
    from gepa_trace.store import open_store

    changes = alias_history(open_store(store), alias, component=component, agent=agent)
    if as_json:
        print_json([c.to_dict() for c in changes])
        return
    if not changes:
        click.echo("no alias changes recorded" + (f" for {alias}" if alias else ""), err=True)
        return
    for c in changes:
        before, after = c.previous or "(unset)", c.version or "(removed)"
        why = f"  ({c.reason})" if c.reason else ""
        click.echo(f"{_when(c.created_at)}  {c.component}  {c.alias}: {before} -> {after}  "
                   f"by {c.actor}{why}")


@prompts.command("revert")
@click.argument("change_id", type=int)
@approve_option
@store_option
@json_option
@handles_errors
def prompts_revert(change_id: int, approve: bool, store: str | None, as_json: bool) -> None:
    """Undo one recorded alias change: point the alias back where it was before it
    (or remove it, if it was not set). The undo is a new record; nothing is erased.

    CHANGE_ID is the id `gepa-trace prompts history --json` shows.

    Example: gepa-trace prompts revert 12
    """
    from gepa_trace.prompts.registry import revert_change
    from gepa_trace.store import open_store

    change = revert_change(open_store(store), change_id, actor=who("prompts revert"),
                           approve=approve)
    if as_json:
        print_json(change.to_dict())
    else:
        click.echo(f"{change.component}: {change.alias} -> "
                   f"{change.previous or '(removed)'} (undoing change {change_id})")


@prompts.command("diff")
@click.argument("a")
@click.argument("b")
@store_option
@handles_errors
def prompts_diff(a: str, b: str, store: str | None) -> None:
    """Unified diff between two stored prompt versions (hash prefixes work).

    Example: gepa-trace prompts diff 3f2a9c 81be07
    """
    from gepa_trace.prompts.registry import diff_versions
    from gepa_trace.store import open_store

    text = diff_versions(open_store(store), a, b)
    click.echo(text if text else "the two versions are identical", nl=bool(not text))


@click.command()
@click.argument("run_id")
@click.option("--out", "out", default="report.html", show_default=True,
              type=click.Path(dir_okay=False, writable=True),
              help="Where to write the HTML file.")
@click.option("--confidence", default=0.95, show_default=True, type=click.FloatRange(0, 1,
              min_open=True, max_open=True),
              help="Level of the held-out gain's interval.")
@store_option
@json_option
@handles_errors
def report(run_id: str, out: str, confidence: float, store: str | None,
           as_json: bool) -> None:
    """Write a self-contained HTML report of optimization run RUN_ID.

    One file with no external URLs: score versus rollouts, each component's Pareto
    front, the lineage of accepted candidates, seed-to-best prompt diffs, the
    reflection's diagnoses, budget spent and the held-out significance test. Prints
    the file's path on stdout.

    Example: gepa-trace report run-20261125-211856-2d8923 --out report.html
    """
    from gepa_trace.cli.common import progress, stderr_is_tty
    from gepa_trace.report import write_report
    from gepa_trace.store import open_store

    st = open_store(store)
    if stderr_is_tty():  # a wait indicator for a person; a script's stderr gets the outcome
        progress(f"reading run {run_id} ...")
    path = write_report(st, run_id, out, confidence=confidence)
    size = path.stat().st_size
    progress(f"wrote {path} ({size:,} bytes)")
    if as_json:
        print_json({"run_id": run_id, "report": str(path), "bytes": size})
    else:
        click.echo(str(path))


@click.command()
@click.argument("run_id")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Prompt file to write: .json, .yaml or .yml.")
@click.option("--confidence", type=click.FloatRange(0.5, 0.999), default=0.95,
              show_default=True, help="Confidence of the held-out gain's interval.")
@click.option("--force", is_flag=True, help="Export even if the gain is not significant.")
@approve_option
@allow_option
@click.option("--promote", "alias", default=None, metavar="ALIAS",
              help="Also point ALIAS (e.g. production) of each component at the export.")
@store_option
@json_option
@handles_errors
def export(run_id: str, out: str, confidence: float, force: bool, approve: bool,
           allow: tuple[str, ...], alias: str | None, store: str | None,
           as_json: bool) -> None:
    """Write the best prompts of a run, gated on a significant held-out gain and review.

    The gate is a paired bootstrap of the held-out test runs, seed against best: the
    export happens only when the lower bound of the gain is above zero (exit code 4
    otherwise; --force overrides and says so). Then the review: changes of the best
    prompts that carry new URLs, e-mail addresses, phone numbers, code, markup,
    instructions to reveal or ignore prompts, or text copied from a few users' traces
    are exported only with --approve (exit code 8 otherwise; --force does not approve).
    `gepa-trace runs show RUN_ID` lists the flags with their evidence.

    Example: gepa-trace export run-20261125-212120-249963 --out prompts.json
    """
    from gepa_trace.prompts.export import export_run
    from gepa_trace.prompts.registry import promote
    from gepa_trace.prompts.review import Allow
    from gepa_trace.store import open_store

    st = open_store(store)
    result = export_run(st, run_id, out, confidence=confidence, force=force, approve=approve,
                        allow=Allow.load(allow))
    if alias:
        for name, version in result.prompts.versions().items():
            promote(st, name, version, alias=alias, approve=approve, review=result.review,
                    actor=who("export"), reason=f"best prompts of run {run_id}",
                    evidence={"run": run_id, "forced": result.forced,
                              "gate": result.gate.to_dict() if result.gate else None})
    if result.forced:
        click.echo("export forced: the held-out gate was not required", err=True)
    if result.gate is not None:
        click.echo(result.gate.sentence(), err=True)
    _say_approved(result.approved)
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(str(result.path))
