"""`gepa-trace feedback add` and `feedback import`: feedback from the command line.

Exit codes: 0 when everything was stored; 3 when `add` names a trace the store does not
have; 1 for any other refusal. `import` stores the good rows even when some are bad,
then exits 1 if any row was rejected, so a script notices a partly bad file; each
rejected row is printed on stderr as `line N: reason`.
"""

from __future__ import annotations

import click

from gepa_trace.cli.common import (
    fail,
    handles_errors,
    json_option,
    print_json,
    progress,
    store_option,
)


@click.group()
def feedback() -> None:
    """Record feedback on traces: one at a time, or a CSV / JSONL file.

    Feedback is the production evidence the optimizer reads: a score (higher is
    better), a label, a comment, or any of them together.

    \b
    Examples:
      gepa-trace feedback add 4bf92f3577b34da6a3ce929d0e0e4736 --score 0 --comment "wrong country"
      gepa-trace feedback import ratings.csv
    """


@feedback.command("add")
@click.argument("trace_id")
@click.option("--score", type=float, default=None, help="A number; higher is better.")
@click.option("--label", default=None, help="A short label, e.g. 'wrong' or 'thumbs-up'.")
@click.option("--comment", default=None, help="Free text: what was wrong or right.")
@click.option("--name", default="user", show_default=True,
              help="What the feedback measures (user, correctness, ...).")
@click.option("--source", default="human", show_default=True,
              help="Who gave it (human, llm-judge, heuristic, ...).")
@click.option("--span", "span_id", default=None, metavar="SPAN_ID",
              help="Attach it to one span of the trace instead of the whole run.")
@store_option
@json_option
@handles_errors
def add(trace_id: str, score: float | None, label: str | None, comment: str | None,
        name: str, source: str, span_id: str | None, store: str | None,
        as_json: bool) -> None:
    """Record one feedback on a trace (a run).

    Refused, with the reason: an unknown or malformed trace id, a score that is not a
    finite number, and feedback with no score, label or comment.

    \b
    Examples:
      gepa-trace feedback add 4bf92f3577b34da6a3ce929d0e0e4736 --score 1
      gepa-trace feedback add 4bf92f3577b34da6a3ce929d0e0e4736 --label wrong \\
          --comment "answered for the wrong country" --name correctness
    """
    from gepa_trace.store.feedback import record_feedback

    recorded = record_feedback(trace_id, score=score, label=label, comment=comment,
                               name=name, source=source, span_id=span_id, store=store)
    if as_json:
        print_json(recorded.to_dict())
    else:
        progress(f"recorded feedback {recorded.id} on trace {recorded.trace_id}")


@feedback.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@store_option
@json_option
@handles_errors
def import_(file: str, store: str | None, as_json: bool) -> None:
    """Import feedback from a CSV (with a header row) or a JSONL file.

    Columns: trace_id (required), score, label, comment, name, source, span_id. Good
    rows are stored together in one transaction; each bad row is reported on stderr
    as `line N: reason` and skipped. Exits 1 if any row was rejected (the good rows
    are stored anyway), 0 otherwise.

    \b
    Examples:
      gepa-trace feedback import ratings.csv
      gepa-trace feedback import judged.jsonl --json
    """
    from gepa_trace.store.feedback import import_feedback

    report = import_feedback(store, file)
    if as_json:
        print_json(report.to_dict())
    for row in report.rejected:
        progress(f"line {row.line}: {row.reason}")
    progress(f"imported {report.accepted} feedback row(s) from {file}"
             + (f"; rejected {len(report.rejected)}" if report.rejected else ""))
    if report.rejected:
        fail(f"{len(report.rejected)} row(s) rejected; the other {report.accepted} were stored")
