"""`gepa-trace export`, `prompts` and `report`: getting improved prompts to deployment."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from gepa_trace.cli.common import handles_errors, json_option, print_json, store_option


def _when(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


@click.group()
def prompts() -> None:
    """Prompt versions in the store and their aliases.

    \b
    Examples:
      gepa-trace prompts ls --component answerer
      gepa-trace prompts promote answerer 3f2a9c --alias production
      gepa-trace prompts diff 3f2a9c 81be07
    """


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
@store_option
@json_option
@handles_errors
def prompts_promote(component: str, version: str, alias: str, store: str | None,
                    as_json: bool) -> None:
    """Point an alias (default: production) of COMPONENT at VERSION.

    Example: gepa-trace prompts promote answerer 3f2a9c --alias production
    """
    from gepa_trace.prompts.registry import promote
    from gepa_trace.store import open_store

    found = promote(open_store(store), component, version, alias=alias)
    if as_json:
        print_json({"component": component, "alias": alias, "version": found.version})
    else:
        click.echo(f"{component}: {alias} -> {found.version}")


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
