"""`gepa-trace examples`: what the optimizer would learn from, and the user's marks.

The listing calls ``replay.dataset.load_examples`` exactly as `optimize` does (same
filters, same need for feedback), so what it shows is what `optimize` would use.
"""

from __future__ import annotations

import json
from typing import Any

import click

from gepa_trace.cli.common import (
    handles_errors,
    json_option,
    parse_since,
    print_json,
    progress,
    store_option,
)

SPLITS = ("train", "val", "test", "left-out")

golden_option = click.option(
    "--golden", "golden_file", default=None, metavar="FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="Trace ids pinned to validation for this command: one per line, or a CSV/JSONL "
         "with a trace_id column. An id that is not a run of the agent is refused (exit 3).")


source_weight_option = click.option(
    "--source-weight", "source_weight", multiple=True, metavar="SOURCE=WEIGHT",
    help="How much one feedback record of a source (user, reviewer, automated) counts in "
         "a run's score (default reviewer=2, automated=1, user=1; 0: the source's records "
         "are evidence only). Repeatable.")

#: The default of ``OptimizerConfig.max_user_share`` (the CLI does not import the optimizer).
DEFAULT_MAX_USER_SHARE = 0.25

max_user_share_option = click.option(
    "--max-user-share", type=click.FloatRange(min=0, max=1, min_open=True),
    default=DEFAULT_MAX_USER_SHARE, show_default=True, metavar="SHARE",
    help="No end user (the run's user.id) has more than this share of a minibatch, the "
         "examples a reflection sees (at least one example); a user with more than it of "
         "the examples is reported. 1: no cap.")


def source_weights(values: Any) -> dict[str, float]:
    """The per-source weights of repeated ``--source-weight SOURCE=WEIGHT`` options (the
    stored list of a resumed run too), checked by ``store.verdict.source_weights``."""
    from gepa_trace.errors import ConfigError
    from gepa_trace.store.verdict import source_weights as checked

    given: dict[str, float] = {}
    for text in values or ():
        name, sep, weight = str(text).partition("=")
        try:
            if not sep:
                raise ConfigError(f"{text!r}: expected SOURCE=WEIGHT, e.g. reviewer=3")
            given[name.strip()] = float(weight)
            checked(given)
        except (ConfigError, ValueError) as exc:
            why = str(exc) if isinstance(exc, ConfigError) else f"{text!r}: not a number"
            raise click.BadParameter(why, param_hint="--source-weight") from None
    return given


def trust_lines(dataset: Any, max_user_share: float) -> list[str]:
    """What `examples` and `optimize` report of one user's reach into the examples:
    users over ``max_user_share`` of them, then each repeated comment."""
    return ([u.line() for u in dataset.user_shares(max_user_share)]
            + [c.line() for c in dataset.repeated_comments])


def example_filter(since: str | None, until: str | None, with_feedback: bool,
                   sample: int | None, golden_file: str | None):
    """The ``ExampleFilter`` of the selection options `optimize` and `examples` share."""
    from gepa_trace.replay.dataset import ExampleFilter
    from gepa_trace.store.marks import golden_ids_in

    return ExampleFilter(since=parse_since(since), until=parse_since(until),
                         only_with_feedback=with_feedback, sample=sample,
                         golden=golden_ids_in(golden_file) if golden_file else ())


def split_fractions(text: str | None, option: str):
    """The ``SplitFractions`` of a "train,val,test" option (the default without one)."""
    from gepa_trace.replay.dataset import SplitFractions

    if not text:
        return SplitFractions()
    try:
        return SplitFractions(*(float(x) for x in text.split(",")))
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(f"{text!r}: expected three shares like 0.5,0.1,0.4 "
                                 f"({exc})", param_hint=option) from None


def _short(value: Any, chars: int) -> str:
    """One line of at most ``chars`` characters: an input's only value, an output's
    answer text (``output_text``), else the JSON."""
    from gepa_trace.replay.dataset import output_text

    if value is None:
        return "-"
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    text = output_text(value) if not isinstance(value, list) else json.dumps(
        value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars - 1] + "…"


def _row(run: Any, split: str, left_out: Any = None) -> dict[str, Any]:
    """One run as `examples --json` lists it."""
    from gepa_trace.replay.dataset import expected_origin

    row: dict[str, Any] = {"trace_id": left_out.trace_id if left_out else run.id,
                           "split": split}
    if left_out is not None:
        row.update(reason=left_out.reason, detail=left_out.detail,
                   duplicate_of=left_out.duplicate_of)
    if run is None:
        return row
    v = run.meta.get("verdict") or {}
    row.update(inputs=dict(run.inputs), output=run.output, score=v.get("score"),
               expected=run.expected, expected_field=v.get("expected_field"),
               expected_from=v.get("expected_from"), expected_source=expected_origin(run),
               conflict=v.get("conflict"), comments=v.get("comments") or [],
               labels=v.get("labels") or [], mark=run.meta.get("mark"),
               user=run.meta.get("user"),
               feedback_records=v.get("records", 0))
    return row


@click.group(invoke_without_command=True)
@click.option("--agent", default=None, metavar="NAME", help="The agent whose runs to list.")
@click.option("--since", default=None, metavar="WHEN",
              help="Only runs since then: 24h, 7d or an ISO date (as optimize --since).")
@click.option("--until", default=None, metavar="WHEN", help="Only runs before then.")
@click.option("--with-feedback", is_flag=True, help="Only runs that have feedback.")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="At most this many examples (as optimize --sample).")
@click.option("--shares", default=None, metavar="TRAIN,VAL,TEST",
              help="Shares of train/validation/held-out test, as optimize --split "
                   "(default 0.5,0.1,0.4).")
@click.option("--metric", default="feedback", show_default=True, metavar="NAME|MODULE:FN",
              help="The metric optimize would use: with feedback (the default) runs with "
                   "no feedback to learn from are left out; with another they are kept.")
@golden_option
@source_weight_option
@max_user_share_option
@click.option("--split", "only", type=click.Choice(SPLITS), default=None,
              help="List only this split (the counts stay whole).")
@click.option("--limit", type=click.IntRange(min=0), default=0, show_default=True,
              help="List at most this many runs (0: all).")
@store_option
@json_option
@click.pass_context
@handles_errors
def examples(ctx: click.Context, agent: str | None, since: str | None, until: str | None,
             with_feedback: bool, sample: int | None, shares: str | None, metric: str,
             golden_file: str | None, source_weight: tuple[str, ...], max_user_share: float,
             only: str | None, limit: int, store: str | None, as_json: bool) -> None:
    """List every run of an agent the optimizer would consider: its split, or why it
    is left out.

    For each run: trace id, split (train, val, test) or the reason it is left out (no
    inputs, no feedback to learn from, duplicate input of another run, excluded, outside
    --since/--until), inputs, recorded output, score, the expected answer and where it
    came from (an explicit correction, a correction phrasing in a comment, or an
    approved output), conflicting corrections, comments and the run's mark. The table
    goes to stdout, a count summary to stderr; --json prints one line.

    Reported on stderr (and in --json), never removed: an end user who supplied more
    than --max-user-share of the examples or of validation, and each comment repeated
    verbatim on 3 or more runs (its text, how many traces and users, the first ids).

    Marks: `examples exclude ID` keeps a run away from the optimizer, `examples golden
    ID...` pins runs to validation, `examples include ID` removes either mark.

    \b
    Examples:
      gepa-trace examples --agent support-agent --since 7d
      gepa-trace examples --agent support-agent --split left-out
      gepa-trace examples --agent support-agent --golden golden.txt --json
      gepa-trace examples exclude 4bf92f3577b34da6a3ce929d0e0e4736 --reason "test account"
    """
    if ctx.invoked_subcommand is not None:
        return
    if not agent:
        raise click.UsageError("Missing option '--agent'.")
    from gepa_trace.replay.dataset import REASONS, load_examples
    from gepa_trace.store import open_store

    fractions = split_fractions(shares, "--shares")
    filters = example_filter(since, until, with_feedback, sample, golden_file)
    dataset = load_examples(open_store(store), agent, filters=filters, fractions=fractions,
                            min_examples=0, need_signal=metric == "feedback",
                            list_outside=True, source_weights=source_weights(source_weight))
    rows = [_row(e, split) for split in ("train", "val", "test")
            for e in getattr(dataset, split)]
    left = [_row(item.run, "left-out", item) for item in dataset.left_out]
    counts = {"train": len(dataset.train), "val": len(dataset.val),
              "test": len(dataset.test), "left_out": len(dataset.left_out)}
    if only:
        rows = [r for r in rows if r["split"] == only]
        left = left if only == "left-out" else []
    if limit:
        rows = rows[:limit]
        left = left[:max(0, limit - len(rows))]
    if as_json:
        print_json({"agent": agent, "counts": counts, "left_out_by_reason":
                    dataset.left_out_by_reason(), "examples": rows, "left_out": left,
                    "user_shares": [u.to_dict() for u in dataset.user_shares(max_user_share)],
                    "repeated_comments": [c.to_dict() for c in dataset.repeated_comments]})
        return
    _print_table(rows + left)
    reasons = ", ".join(f"{n} {REASONS[reason]}" for reason, n in
                        sorted(dataset.left_out_by_reason().items(), key=lambda kv: -kv[1]))
    progress(f"{agent}: {sum(counts.values())} runs: {counts['train']} train, "
             f"{counts['val']} val, {counts['test']} test, {counts['left_out']} left out"
             + (f" ({reasons})" if reasons else ""))
    for line in trust_lines(dataset, max_user_share):
        progress(line)


def _print_table(rows: list[dict[str, Any]]) -> None:
    headers = ["TRACE ID", "SPLIT", "SCORE", "EXPECTED", "FROM", "MARK", "INPUT", "OUTPUT",
               "COMMENTS"]
    table = []
    for r in rows:
        split = r["split"] if r["split"] != "left-out" else f"left out: {r['detail']}"
        score = r.get("score")
        source = r.get("expected_source") or "-"
        if r.get("conflict"):
            source = f"conflict: {r['conflict']}"
        table.append([r["trace_id"], split, "-" if score is None else f"{score:.2f}",
                      _short(r.get("expected"), 24), _short(source, 48),
                      r.get("mark") or "-", _short(r.get("inputs"), 40),
                      _short(r.get("output"), 30),
                      _short(" | ".join(r.get("comments") or []) or None, 40)])
    if not table:
        progress("no runs to list")
        return
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    for row in [headers, *table]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _say_marked(marks: list[Any], as_json: bool) -> None:
    if as_json:
        print_json([m.to_dict() for m in marks])
        return
    for m in marks:
        progress(f"{m.trace_id} ({m.agent}): {m.mark}"
                 + (f" ({m.reason})" if m.reason else ""))


@examples.command("exclude")
@click.argument("trace_id")
@click.option("--reason", default=None, metavar="TEXT", help="Why (shown by `examples`).")
@store_option
@json_option
@handles_errors
def exclude(trace_id: str, reason: str | None, store: str | None, as_json: bool) -> None:
    """Keep a run away from the optimizer (it is listed as left out, excluded).

    Example: gepa-trace examples exclude 4bf92f3577b34da6a3ce929d0e0e4736 --reason spam
    """
    from gepa_trace.store.marks import set_mark

    _say_marked(set_mark(store, [trace_id], "excluded", reason), as_json)


@examples.command("golden")
@click.argument("trace_ids", nargs=-1, required=True)
@click.option("--reason", default=None, metavar="TEXT", help="Why (shown by `examples`).")
@store_option
@json_option
@handles_errors
def golden(trace_ids: tuple[str, ...], reason: str | None, store: str | None,
           as_json: bool) -> None:
    """Pin runs to validation: they are never trained on or held out.

    Example: gepa-trace examples golden 4bf92f3577b34da6a3ce929d0e0e4736 5c0e...
    """
    from gepa_trace.store.marks import set_mark

    _say_marked(set_mark(store, trace_ids, "golden", reason), as_json)


@examples.command("include")
@click.argument("trace_id")
@store_option
@json_option
@handles_errors
def include(trace_id: str, store: str | None, as_json: bool) -> None:
    """Remove a run's mark (excluded or golden): it is an example like any other.

    Example: gepa-trace examples include 4bf92f3577b34da6a3ce929d0e0e4736
    """
    from gepa_trace.store.marks import clear_mark

    removed = clear_mark(store, trace_id)
    if as_json:
        print_json({"trace_id": trace_id, "removed": removed.to_dict() if removed else None})
    elif removed is None:
        progress(f"{trace_id}: no mark; nothing to do")
    else:
        progress(f"{removed.trace_id} ({removed.agent}): {removed.mark} mark removed")
