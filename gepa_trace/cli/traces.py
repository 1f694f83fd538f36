"""`gepa-trace traces`, `traces show` and `components`: reading what was captured.

Thin: parse the options, call ``gepa_trace.store.queries``, print. ``--json`` prints the
``to_dict()`` of what the library returned, nothing more or less.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from gepa_trace.cli.common import (
    handles_errors,
    json_option,
    parse_since,
    print_json,
    store_option,
)


def _when(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{ms / 60_000:.1f} min"


def _tokens(tokens_in: int | None, tokens_out: int | None) -> str:
    if not tokens_in and not tokens_out:
        return ""
    return f"{tokens_in or 0}/{tokens_out or 0} tok"


def _score(score: float | None) -> str:
    return "-" if score is None else f"{score:g}"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        click.echo("  ".join(cells).rstrip())


@click.group(invoke_without_command=True)
@click.option("--agent", default=None, metavar="NAME", help="Only runs of this agent.")
@click.option("--since", default=None, metavar="WHEN",
              help="Only runs started since then: 24h, 7d, 30m or an ISO date.")
@click.option("--until", default=None, metavar="WHEN",
              help="Only runs started before then (same forms as --since).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=0),
              help="At most this many runs, newest first (0: all).")
@click.option("--with-feedback", "only_with_feedback", is_flag=True,
              help="Only runs that have feedback.")
@click.option("--rollouts", "include_rollouts", is_flag=True,
              help="Include the optimizer's rollouts (hidden by default).")
@store_option
@json_option
@click.pass_context
@handles_errors
def traces(ctx: click.Context, agent: str | None, since: str | None, until: str | None,
           limit: int, only_with_feedback: bool, include_rollouts: bool, store: str | None,
           as_json: bool) -> None:
    """List recorded runs of an agent, newest first, with their feedback.

    A run is one trace: its root span (agent, status, duration, input), the spans and
    tokens under it, and the mean feedback score. `traces show TRACE_ID` prints one run
    as a span tree.

    \b
    Examples:
      gepa-trace traces --agent support-agent --since 24h
      gepa-trace traces --with-feedback --limit 100 --json
      gepa-trace traces show 4bf92f3577b34da6a3ce929d0e0e4736
    """
    if ctx.invoked_subcommand is not None:
        return  # `traces --store URL show ID`: show inherits this --store
    from gepa_trace.store import open_store
    from gepa_trace.store.queries import list_runs

    start, end = parse_since(since), parse_since(until)  # a bad date fails before any I/O
    runs = list_runs(open_store(store), agent=agent, since=start,
                     until=end, only_with_feedback=only_with_feedback,
                     limit=limit or None, include_rollouts=include_rollouts,
                     # the table shows a one-line preview; JSON is for scripts: all of it
                     preview_chars=None if as_json else 60)
    if as_json:
        print_json([run.to_dict() for run in runs])
        return
    if not runs:
        click.echo("no runs match" + (f" (agent {agent})" if agent else ""), err=True)
        return
    _table(["TRACE ID", "AGENT", "STARTED", "DURATION", "STATUS", "SPANS", "TOKENS",
            "SCORE (N)", "INPUT"],
           [[r.trace_id, r.agent or "-", _when(r.start_time), _duration(r.duration_ms),
             r.status, str(r.span_count), _tokens(r.input_tokens, r.output_tokens) or "-",
             _score_cell(r), r.input or ""] for r in runs])


def _score_cell(run: Any) -> str:
    """The run's score and how many feedback records count for it (replaced ones do not)."""
    if not run.feedback:
        return "-"
    return f"{_score(run.score)} ({sum(1 for f in run.feedback if f.replaced_by is None)})"


@traces.command("show")
@click.argument("trace_id")
@store_option
@json_option
@handles_errors
def show(trace_id: str, store: str | None, as_json: bool) -> None:
    """Print one run as a span tree, then its feedback.

    Each line: span name (indented under its parent), span type, component and prompt
    version, model, duration, input/output tokens, status.

    \b
    Examples:
      gepa-trace traces show 4bf92f3577b34da6a3ce929d0e0e4736
      gepa-trace traces show 4bf92f3577b34da6a3ce929d0e0e4736 --json
    """
    from gepa_trace.store import open_store
    from gepa_trace.store.queries import get_trace
    from gepa_trace.store.spans import flagged_spans

    store = open_store(store)
    trace = get_trace(store, trace_id)
    flagged = flagged_spans(store, trace.trace_id)
    if as_json:
        print_json({**trace.to_dict(), "flagged_spans": flagged})
        return
    root = trace.root
    click.echo(f"trace {trace.trace_id}  agent {trace.agent or '-'}  started "
               f"{_when(root.start_ns / 1e9)}  {len(trace.spans)} spans  "
               f"{_tokens(trace.input_tokens, trace.output_tokens) or '0 tok'}")
    rows = []
    for span in trace.spans:
        component = span.component or ""
        if span.prompt_version:
            component += f"@{span.prompt_version[:12]}"
        if span.span_id in flagged:  # its version is not its template's hash
            component += f" [{flagged[span.span_id]}]"
        status = span.status + (f": {span.status_message}" if span.status_message else "")
        rows.append(["  " * span.depth + span.name, span.span_type or span.kind.lower(),
                     component, span.model or "", _duration(span.duration_ms),
                     _tokens(span.input_tokens, span.output_tokens), status])
    _table(["SPAN", "TYPE", "COMPONENT", "MODEL", "DURATION", "TOKENS", "STATUS"], rows)
    click.echo("")
    if not trace.feedback:
        click.echo("feedback: none")
        return
    click.echo("feedback:")
    for fb in trace.feedback:
        click.echo("  " + "  ".join(_feedback_parts(fb)))
        if fb.expected is not None:
            field = f" (field {fb.expected_field})" if fb.expected_field else ""
            click.echo(f"    expected{field}: " + fb.expected.replace("\n", "\n      "))
        if fb.comment:
            click.echo("    " + fb.comment.replace("\n", "\n    "))


def _feedback_parts(fb: Any) -> list[str]:
    """One feedback record's header line: id, name, score with its declared range,
    label, span, source and time, and whether it was replaced."""
    score = _score(fb.score)
    if fb.score is not None and fb.score_low is not None:
        score += f" ({fb.score_low:g}..{fb.score_high:g})"
    parts = [f"#{fb.id}", fb.name, f"score={score}"]
    if fb.label:
        parts.append(f"label={fb.label}")
    if fb.span_id:
        parts.append(f"span={fb.span_id}")
    if fb.feedback_key and fb.feedback_key.startswith("id:"):
        parts.append(f"feedback_id={fb.feedback_key[3:]}")
    parts.append(f"({fb.source}, {_when(fb.created_at)})")
    if fb.replaced_by is not None:
        parts.append(f"[replaced by #{fb.replaced_by}; not used]")
    return parts


def _template_lines(template: Any) -> list[str]:
    """A template's messages as 'role: content' lines (raw text if not a message list)."""
    if isinstance(template, list):
        lines = []
        for message in template:
            if isinstance(message, dict):
                role = message.get("role") or message.get("type") or "?"
                content = message.get("content")
                if not isinstance(content, str):
                    content = json.dumps(content, ensure_ascii=False)
                lines.append(f"{role}: {content}")
            else:
                lines.append(str(message))
        return lines
    if template is None:
        return ["(template not recorded)"]
    return [template if isinstance(template, str) else json.dumps(template, ensure_ascii=False)]


@click.command()
@click.option("--agent", default=None, metavar="NAME",
              help="Only components called in this agent's runs.")
@click.option("--candidates", "include_candidates", is_flag=True,
              help="Also list versions the optimizer proposed but production never ran.")
@store_option
@json_option
@handles_errors
def components(agent: str | None, include_candidates: bool, store: str | None,
               as_json: bool) -> None:
    """List the components (prompts) of an agent, their versions and LLM calls.

    For each component: the number of LLM calls, then each prompt version (content
    hash) with its calls, first and last seen, and its template messages.

    \b
    Examples:
      gepa-trace components --agent support-agent
      gepa-trace components --json
    """
    from gepa_trace.store import open_store
    from gepa_trace.store.components import list_components
    from gepa_trace.store.spans import flagged_counts

    store = open_store(store)
    found = list_components(store, agent=agent, include_candidates=include_candidates)
    flagged = flagged_counts(store, agent)
    if as_json:
        print_json([{**c.to_dict(), "inconsistent_spans": flagged.get(c.name, 0)}
                    for c in found])
        return
    listed = {c.name for c in found}
    for name, count in sorted(flagged.items()):
        if name not in listed:  # a component none of whose LLM calls were listed
            click.echo(f"{name or '(no component)'}  {count} inconsistent span(s) only: "
                       "their version is not the hash of their template; never a seed")
    if not found:
        if not flagged:
            click.echo("no components recorded" + (f" for agent {agent}" if agent else ""),
                       err=True)
        return
    for component in found:
        click.echo(f"{component.name}  {component.calls} calls  "
                   f"{len(component.versions)} version(s)  "
                   f"first {_when(component.first_seen)}  last {_when(component.last_seen)}")
        if flagged.get(component.name):
            click.echo(f"  {flagged[component.name]} inconsistent span(s): their version is "
                       "not the hash of their template; stored, never used as a seed")
        for version in component.versions:
            origin = f"  {version.origin}" if version.origin else ""
            click.echo(f"  version {version.version or '(none)'}  {version.calls} calls  "
                       f"first {_when(version.first_seen)}  last {_when(version.last_seen)}"
                       f"{origin}")
            for line in _template_lines(version.template):
                click.echo("      " + line.replace("\n", "\n      "))
