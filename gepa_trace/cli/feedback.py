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

    Feedback is the production evidence the optimizer reads: a score within its
    declared range (0..1 unless --score-range says otherwise), a label, a comment, and
    a correction (--expected: the right output, or with --expected-field the right value
    of one output field). Recording is idempotent: the same record twice (or a file
    imported twice) is stored once. A later record replaces an earlier one only with
    --replace; otherwise the records add up (see the README's feedback section).

    \b
    Examples:
      gepa-trace feedback add 4bf92f3577b34da6a3ce929d0e0e4736 --score 0 --comment "wrong country"
      gepa-trace feedback add 4bf92f3577b34da6a3ce929d0e0e4736 --expected Peru --source reviewer
      gepa-trace feedback import ratings.csv
    """


@feedback.command("add")
@click.argument("trace_id")
@click.option("--score", type=float, default=None,
              help="A number within the score range; higher is better.")
@click.option("--score-range", default=None, metavar="LOW,HIGH",
              help="The range the score lies in, e.g. 1,5 for five stars.  [default: 0,1]")
@click.option("--label", default=None, help="A short label, e.g. 'wrong' or 'thumbs-up'.")
@click.option("--comment", default=None, help="Free text: what was wrong or right.")
@click.option("--expected", default=None, metavar="TEXT",
              help="A correction: the right output (or the right value of --expected-field).")
@click.option("--expected-field", default=None, metavar="FIELD",
              help="The output field --expected is the right value of.")
@click.option("--name", default="user", show_default=True,
              help="What the feedback measures (user, correctness, ...).")
@click.option("--source", default="user", show_default=True,
              help="Who gave it: user, reviewer or automated (aliases such as human, "
                   "llm-judge are stored as those).")
@click.option("--span", "span_id", default=None, metavar="SPAN_ID",
              help="Attach it to one span of the trace instead of the whole run.")
@click.option("--feedback-id", default=None, metavar="KEY",
              help="Your idempotency key: recording the same KEY again stores nothing.")
@click.option("--replace", is_flag=True,
              help="Replace the earlier records with this --feedback-id, or without one the "
                   "records in effect with the same trace, span, name and source.")
@store_option
@json_option
@handles_errors
def add(trace_id: str, score: float | None, score_range: str | None, label: str | None,
        comment: str | None, expected: str | None, expected_field: str | None, name: str,
        source: str, span_id: str | None, feedback_id: str | None, replace: bool,
        store: str | None, as_json: bool) -> None:
    """Record one feedback on a trace (a run).

    Refused, with the reason: an unknown or malformed trace id, a score that is not a
    finite number or lies outside its range, an unknown source, --expected-field without
    --expected, feedback with nothing in it, and a --feedback-id already recorded with
    other content (unless --replace). The same record recorded again is not stored
    twice: "already recorded (feedback N)".

    \b
    Examples:
      gepa-trace feedback add 4bf92f3577b34da6a3ce929d0e0e4736 --score 1
      gepa-trace feedback add 4bf92f3577b34da6a3ce929d0e0e4736 --score 4 --score-range 1,5
      gepa-trace feedback add 4bf92f3577b34da6a3ce929d0e0e4736 --label wrong \\
          --comment "answered for the wrong country" --expected Peru --source reviewer
    """
    from gepa_trace.store.feedback import record_feedback

    recorded = record_feedback(trace_id, score=score, label=label, comment=comment,
                               name=name, source=source, span_id=span_id, store=store,
                               expected=expected, expected_field=expected_field,
                               score_range=score_range, feedback_id=feedback_id,
                               replace=replace)
    if as_json:
        print_json(recorded.to_dict())
    elif recorded.duplicate and not recorded.replaced:
        progress(f"already recorded (feedback {recorded.id}); nothing stored")
    else:
        replaced = ", ".join(str(i) for i in recorded.replaced)
        done = (f"kept feedback {recorded.id}" if recorded.duplicate else
                f"recorded feedback {recorded.id}")
        progress(f"{done} on trace {recorded.trace_id}"
                 + (f"; it replaces feedback {replaced}" if replaced else ""))


@feedback.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--replace", is_flag=True,
              help="Each row replaces earlier records as `feedback add --replace` does; "
                   "the file's last row for each target counts.")
@store_option
@json_option
@handles_errors
def import_(file: str, replace: bool, store: str | None, as_json: bool) -> None:
    """Import feedback from a CSV (with a header row) or a JSONL file.

    Columns: trace_id (required), span_id, name, score, score_range ("1,5"; in JSONL
    also [1, 5]) or score_low and score_high, label, comment, expected, expected_field,
    source, feedback_id. Good rows are stored together in one transaction; rows already
    recorded (an earlier import of the same file, or a repeated row) are counted as
    duplicates and stored once; each bad row is reported on stderr as `line N: reason`
    and skipped. Exits 1 if any row was rejected (the good rows are stored anyway), 0
    otherwise.

    \b
    Examples:
      gepa-trace feedback import ratings.csv
      gepa-trace feedback import judged.jsonl --json
    """
    from gepa_trace.store.feedback import import_feedback

    report = import_feedback(store, file, replace=replace)
    if as_json:
        print_json(report.to_dict())
    for row in report.rejected:
        progress(f"line {row.line}: {row.reason}")
    progress(f"imported {report.accepted} feedback row(s) from {file}"
             + (f"; {report.duplicates} already recorded" if report.duplicates else "")
             + (f"; replaced {report.replaced} earlier record(s)" if report.replaced else "")
             + (f"; {report.superseded} overridden by a later row of the file"
                if report.superseded else "")
             + (f"; rejected {len(report.rejected)}" if report.rejected else ""))
    if report.rejected:
        fail(f"{len(report.rejected)} row(s) rejected; the other {report.accepted} were stored")
