"""`gepa-trace optimize --resume RUN_ID`: the stored settings, and what the user gave again.

A run records the options its command was given (``OptimizerConfig.command``). Resuming
takes them back; an option given again on the command line wins, with a note on stderr
saying what it replaces. A finished run is reported as finished and left unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import click
from click.core import ParameterSource

#: Options that are about this invocation, not the run: never stored, never restored.
NOT_STORED = frozenset({"resume", "store", "as_json"})


def recorded(params: dict[str, Any]) -> dict[str, Any]:
    """The options of an optimize command, as stored with its run."""
    return {name: value for name, value in params.items() if name not in NOT_STORED}


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                              ParameterSource.ENVIRONMENT)


def _flag(ctx: click.Context, name: str) -> str:
    param = next((p for p in ctx.command.params if p.name == name), None)
    return param.opts[0] if param is not None and param.opts else name


class FinishedRun(Exception):
    """The run to resume has finished: nothing to do."""

    def __init__(self, row: Any):
        super().__init__(row.id)
        self.row = row


def resumed_params(ctx: click.Context, params: dict[str, Any], store: str | None,
                   run_id: str) -> tuple[dict[str, Any], list[str]]:
    """``params`` with every option not given on the command line taken from stored run
    ``run_id``, and one note per given option that differs from the stored one.

    Raises ``NotFoundError`` for an unknown run, ``FinishedRun`` for a finished one, and
    ``ConfigError`` when a given ``--agent`` is not the run's agent.
    """
    from sqlalchemy import select

    from gepa_trace.errors import ConfigError, NotFoundError
    from gepa_trace.store import OptimizationRunRow, open_store

    table = OptimizationRunRow.__table__
    with open_store(store).read() as conn:
        row = conn.execute(select(table).where(table.c.id == run_id)).first()
    if row is None:
        raise NotFoundError(f"no optimization run {run_id!r} in the store")
    if row.status == "finished":
        raise FinishedRun(row)
    stored = dict(json.loads(row.config or "{}").get("command") or {})
    if _given(ctx, "agent") and params["agent"] != row.agent:
        raise ConfigError(f"run {run_id} optimizes agent {row.agent!r}, not "
                          f"{params['agent']!r}; drop --agent or resume another run")
    merged = dict(params)
    merged["agent"] = row.agent
    merged["warm_start"] = False  # the run's warm start is in its stored candidates
    notes = []
    for name, value in recorded(params).items():
        if name == "agent" or name not in stored:
            continue
        if not _given(ctx, name):
            merged[name] = stored[name]
        elif stored[name] != value:
            notes.append(f"{_flag(ctx, name)} {value!r} replaces {stored[name]!r} "
                         f"of run {run_id}")
    if not stored:
        notes.append(f"run {run_id} was started before runs recorded their options: "
                     "give them again (only those given are used)")
    return merged, notes


def finished_message(row: Any) -> str:
    return (f"run {row.id} has finished ({row.stop_reason or 'no reason recorded'}); "
            "nothing to resume, it is left as it was")
