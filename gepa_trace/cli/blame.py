"""`gepa-trace prompts blame`: each line of a prompt version with where it came from."""

from __future__ import annotations

import click

from gepa_trace.cli.common import handles_errors, json_option, print_json, store_option


@click.command("blame")
@click.argument("component")
@click.option("--version", "version", default=None, metavar="V",
              help="The version to blame (hash or unique prefix; default: the run's best "
                   "with --run, else the production alias, else the newest an optimization "
                   "produced).")
@click.option("--run", "run_id", default=None, metavar="RUN_ID",
              help="Blame the version as this optimization run has it (default: the run "
                   "that produced it).")
@store_option
@json_option
@handles_errors
def prompts_blame(component: str, version: str | None, run_id: str | None, store: str | None,
                  as_json: bool) -> None:
    """Print each line of COMPONENT's instruction with the iteration that wrote it.

    git-blame style: "seed" for a line of the seed, "it 7 #12" for a line candidate
    #12 wrote in iteration 7; then, per such candidate, its diagnosis and the examples,
    traces and feedback records that motivated it. A version no optimization produced
    is all "seed/observed". Unknown component, version or run: exit 3.

    \b
    Examples:
      gepa-trace prompts blame answerer
      gepa-trace prompts blame answerer --run run-20261125-211856-2d8923 --json
    """
    from gepa_trace.report.blame import load_blame, text_lines
    from gepa_trace.store import open_store

    found = load_blame(open_store(store), component, version, run_id)
    if as_json:
        print_json(found.to_dict())
        return
    for line in text_lines(found):
        click.echo(line)
