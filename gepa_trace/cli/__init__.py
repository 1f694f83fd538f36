"""gepa-trace: turn the production traces of LangChain agents into better prompts.

\b
Quick start:
  gepa-trace demo                         the whole cycle, offline, on SQLite
  gepa-trace traces --agent support-agent runs recorded by gt.instrument()
  gepa-trace components                   prompts seen, their versions and calls
  gepa-trace examples --agent NAME        what optimize would learn from, and why not
  gepa-trace optimize --agent support-agent --entrypoint app:build_agent \\
      --metric app:metric --reflection-lm openai/gpt-4.1
  gepa-trace export RUN_ID --out prompts.json --promote candidate
  gepa-trace canary status --agent NAME   the candidate against production, on feedback
  gepa-trace watch --agent NAME           nightly: promote or roll back on feedback
  gepa-trace versions --agent NAME        each prompt version's production figures
  gepa-trace ui                           browse, review and promote in a browser
  gepa-trace prune --older-than 30d       delete old traces (keeps what runs use)

Every command takes --store URL, here before the command (gepa-trace --store URL
traces) or after it (gepa-trace traces --store URL; that one wins). Default:
$GEPA_TRACE_STORE, else sqlite:///gepa_trace.db. Only collect, ingest and demo create
a store; the others exit 3 with "no store at PATH". --json prints one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import click

# name -> "module:attribute". Commands are imported only when used, so that
# `gepa-trace --help` does not pay for litellm or LangChain imports.
COMMANDS = {
    "collect": "gepa_trace.cli.collect:collect",
    "ingest": "gepa_trace.cli.collect:ingest",
    "traces": "gepa_trace.cli.traces:traces",
    "components": "gepa_trace.cli.traces:components",
    "feedback": "gepa_trace.cli.feedback:feedback",
    "examples": "gepa_trace.cli.examples:examples",
    "optimize": "gepa_trace.cli.optimize:optimize",
    "runs": "gepa_trace.cli.optimize:runs",
    "export": "gepa_trace.cli.ship:export",
    "prompts": "gepa_trace.cli.ship:prompts",
    "report": "gepa_trace.cli.ship:report",
    "demo": "gepa_trace.cli.demo:demo",
    "prune": "gepa_trace.cli.prune:prune",
    "versions": "gepa_trace.cli.versions:versions",
    "canary": "gepa_trace.cli.canary:canary",
    "watch": "gepa_trace.cli.canary:watch",
    "ui": "gepa_trace.cli.ui:ui",
}


def _available(target: str) -> bool:
    module = target.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self.get_command(ctx, name) is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None or not _available(target):
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr, None)


@click.group(cls=LazyGroup, help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--store", default=None, metavar="URL",
              help="Store URL for the command that follows (its own --store wins).")
@click.version_option(package_name="gepa-trace")
def main(debug: bool, store: str | None) -> None:
    # --store is read by each command's own --store option (cli.common.inherit_store).
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    click.get_current_context().call_on_close(_close_idle_main_loop)


def _close_idle_main_loop() -> None:
    if "gepa_trace.lm.client" in sys.modules:  # only then can litellm have made one
        sys.modules["gepa_trace.lm.client"].close_idle_main_loop()
