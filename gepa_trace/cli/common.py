"""What every command shares: --store, --json, --debug, error handling, output helpers."""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

import click

from gepa_trace.errors import GepaTraceError

STORE_HELP = ("Store URL: sqlite:///path or postgresql+psycopg://... (default: the "
              "--store given before the command, else $GEPA_TRACE_STORE, else "
              "sqlite:///gepa_trace.db).")


def inherit_store(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A command's own --store wins; else the nearest enclosing group's
    (`gepa-trace --store URL traces`, `traces --store URL show ID`); else None, which
    ``gepa_trace.store.resolve_url`` turns into $GEPA_TRACE_STORE or the default.

    No click ``envvar`` here on purpose: it would make the environment look like an
    explicit --store and beat the one given to the group."""
    if value is not None:
        return value
    parent = ctx.parent
    while parent is not None:
        inherited = parent.params.get("store")
        if inherited is not None:
            return inherited
        parent = parent.parent
    return None


store_option = click.option("--store", "store", default=None, metavar="URL",
                            callback=inherit_store, help=STORE_HELP)
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as one line of JSON on stdout.")


class CommandError(click.ClickException):
    """A one-line error with its own exit code."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def handles_errors(fn: Callable) -> Callable:
    """Turn library errors into one clear line and a non-zero exit (tracebacks: --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool((ctx.find_root().params or {}).get("debug"))
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except GepaTraceError as exc:
            if debug:
                raise
            raise CommandError(str(exc), getattr(exc, "exit_code", 1)) from exc
        except KeyboardInterrupt:
            raise click.Abort() from None
        except BrokenPipeError:  # `gepa-trace ... | head`: the reader left, nothing to say
            sys.stderr.close()
            raise SystemExit(0) from None
        except Exception as exc:  # an unexpected failure is still one line without --debug
            if debug:
                raise
            raise CommandError(f"internal error: {type(exc).__name__}: {exc} "
                               "(rerun with --debug for the traceback)") from exc

    return wrapper


def print_json(data: Any) -> None:
    """One compact line (JSON Lines), so `--json >> runs.jsonl` appends one record per run."""
    click.echo(json.dumps(data, separators=(",", ":"), default=str, ensure_ascii=False))


def progress(message: str) -> None:
    """Progress and status lines go to stderr, so stdout stays data."""
    click.echo(message, err=True)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str | None, *, now: float | None = None) -> float | None:
    """'24h', '7d', '30m' or an ISO date/time -> epoch seconds (None stays None)."""
    if text is None:
        return None
    now = time.time() if now is None else now
    match = _DURATION.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    from datetime import datetime

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a duration like 24h/7d nor an ISO "
                                 "date like 2026-11-01") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def fail(message: str, exit_code: int = 1) -> None:
    raise CommandError(message, exit_code)


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def who(command: str) -> str:
    """The actor recorded for a change a person makes with ``command`` (alias history)."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (some containers)
        user = "unknown user"
    return f"{user} via gepa-trace {command}"
