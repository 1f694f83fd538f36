"""Which records a new feedback record adds, duplicates or replaces: the store side of
idempotency and ``--replace`` (the rules are written in ``record_feedback``'s docstring).

Everything here runs inside a caller's write transaction: ``record_feedback`` and
``import_feedback`` (``store.feedback``) and the span writer for ``gepa.feedback`` span
events (``store.spans``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, tuple_, update

from gepa_trace.store.feedback_fields import content_of, feedback_id_of
from gepa_trace.store.tables import FeedbackRow, SpanRow

_FEEDBACK = FeedbackRow.__table__
_SPANS = SpanRow.__table__
_CHUNK = 500


def missing_targets(conn, rows: list[dict[str, Any]]) -> dict[int, str]:
    """For each row index whose trace (or span) is not stored, why. Bulk: a query per
    ``_CHUNK`` distinct trace ids, and one per ``_CHUNK`` distinct (trace, span) pairs."""
    trace_ids = list(dict.fromkeys(r["trace_id"] for r in rows))
    known: set[str] = set()
    for start in range(0, len(trace_ids), _CHUNK):
        chunk = trace_ids[start:start + _CHUNK]
        known.update(conn.execute(select(_SPANS.c.trace_id).distinct()
                                  .where(_SPANS.c.trace_id.in_(chunk))).scalars())
    pairs = list(dict.fromkeys((r["trace_id"], r["span_id"]) for r in rows
                               if r["span_id"] and r["trace_id"] in known))
    known_pairs: set[tuple[str, str]] = set()
    for start in range(0, len(pairs), _CHUNK):
        chunk = pairs[start:start + _CHUNK]
        known_pairs.update(tuple(p) for p in conn.execute(
            select(_SPANS.c.trace_id, _SPANS.c.span_id)
            .where(tuple_(_SPANS.c.trace_id, _SPANS.c.span_id).in_(chunk))).all())
    missing = {}
    for index, row in enumerate(rows):
        if row["trace_id"] not in known:
            missing[index] = f"unknown trace id {row['trace_id']} (no span of it is stored)"
        elif row["span_id"] and (row["trace_id"], row["span_id"]) not in known_pairs:
            missing[index] = f"trace {row['trace_id']} has no span {row['span_id']}"
    return missing


@dataclass
class Outcome:
    record: dict[str, Any] | None = None  # the stored row in effect
    duplicate: bool = False
    replaced: tuple[int, ...] = ()
    conflict: str | None = None


def _rows_with_keys(conn, keys: Sequence[str],
                   known: dict[int, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every stored record (in effect or replaced) with one of ``keys``, oldest first.
    ``known`` maps ids to the one dict of each record, shared with ``_in_effect_on``, so
    marking a record replaced is seen by both lookups."""
    found: dict[str, list[dict[str, Any]]] = {}
    keys = list(dict.fromkeys(keys))
    for start in range(0, len(keys), _CHUNK):
        rows = conn.execute(select(_FEEDBACK).where(
            _FEEDBACK.c.feedback_key.in_(keys[start:start + _CHUNK]))
            .order_by(_FEEDBACK.c.id)).mappings().all()
        for row in rows:
            found.setdefault(row["feedback_key"], []).append(
                known.setdefault(row["id"], dict(row)))
    return found


def _coordinates(row: dict[str, Any]) -> tuple:
    return row["trace_id"], row["span_id"], row["name"], row["source"]


def _in_effect_on(conn, trace_ids: Sequence[str],
                  known: dict[int, dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Records in effect on these traces, by (trace, span, name, source)."""
    found: dict[tuple, list[dict[str, Any]]] = {}
    trace_ids = list(dict.fromkeys(trace_ids))
    for start in range(0, len(trace_ids), _CHUNK):
        rows = conn.execute(select(_FEEDBACK).where(
            _FEEDBACK.c.trace_id.in_(trace_ids[start:start + _CHUNK]),
            _FEEDBACK.c.replaced_by.is_(None)).order_by(_FEEDBACK.c.id)).mappings().all()
        for row in rows:
            found.setdefault(_coordinates(row), []).append(
                known.setdefault(row["id"], dict(row)))
    return found


def _conflict_message(key: str) -> str:
    return (f"feedback_id {feedback_id_of(key)!r} is already recorded with other content; "
            "pass --replace to replace it")


def store_rows(conn, rows: Sequence[dict[str, Any]], replace: bool) -> list[Outcome]:
    """Store checked rows (whose traces are known) in order, in one transaction, by the
    rules of ``record_feedback``; one outcome per row. Earlier rows count for later
    ones, so a row repeated in one file is one record."""
    known: dict[int, dict[str, Any]] = {}
    by_key = _rows_with_keys(conn, [r["feedback_key"] for r in rows], known)
    live_on = _in_effect_on(conn, [r["trace_id"] for r in rows], known) if replace else {}
    outcomes = []
    for row in rows:
        key = row["feedback_key"]
        same_key = by_key.setdefault(key, [])
        content = content_of(row)
        live = [r for r in same_key if r["replaced_by"] is None]
        if not replace:
            match = next((r for r in live + same_key if content_of(r) == content), None)
            if match is not None:
                outcomes.append(Outcome(match, duplicate=True))
            elif same_key:
                outcomes.append(Outcome(conflict=_conflict_message(key)))
            else:
                new = _insert(conn, row, replacing=[])
                same_key.append(new)
                outcomes.append(Outcome(new))
            continue
        if key.startswith("id:"):
            targets = live
        else:
            targets = [r for r in live_on.get(_coordinates(row), [])
                       if r["replaced_by"] is None]
        kept = next((r for r in live if content_of(r) == content), None)
        if kept is not None:  # already in effect: it stays, the others on it go
            others = [r for r in targets if r["id"] != kept["id"]]
            _mark_replaced(conn, others, kept["id"])
            outcomes.append(Outcome(kept, duplicate=True,
                                     replaced=tuple(r["id"] for r in others)))
            continue
        new = _insert(conn, row, replacing=targets)
        same_key.append(new)
        live_on.setdefault(_coordinates(new), []).append(new)
        outcomes.append(Outcome(new, replaced=tuple(r["id"] for r in targets)))
    return outcomes


def _mark_replaced(conn, targets: Sequence[dict[str, Any]], by: int) -> None:
    if not targets:
        return
    conn.execute(update(_FEEDBACK).where(_FEEDBACK.c.id.in_([r["id"] for r in targets]))
                 .values(replaced_by=by))
    for record in targets:
        record["replaced_by"] = by


def _insert(conn, row: dict[str, Any], replacing: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Insert ``row``; the ``replacing`` records are marked replaced by it first, so a
    replacement that keeps its feedback_id never has two records in effect with one key
    (the unique index ``ux_feedback_key`` covers records in effect only)."""
    values = dict(row)
    if replacing:
        values["feedback_key"] = None
    new_id = conn.execute(insert(_FEEDBACK).values(**values)).inserted_primary_key[0]
    if replacing:
        _mark_replaced(conn, replacing, new_id)
        conn.execute(update(_FEEDBACK).where(_FEEDBACK.c.id == new_id)
                     .values(feedback_key=row["feedback_key"]))
    return dict(row, id=int(new_id), replaced_by=None)


def store_event_feedback(conn, rows: Sequence[dict[str, Any]]) -> int:
    """Store feedback rows read from ``gepa.feedback`` span events, in the transaction
    that stores their spans (so their traces are known); returns how many were skipped
    because their feedback_id is already recorded with other content. A row already
    recorded is skipped silently: a re-sent span adds nothing. Events never replace."""
    now = time.time()
    rows = [dict(r, created_at=r.get("created_at") or now) for r in rows]
    outcomes = store_rows(conn, rows, replace=False)
    return sum(1 for o in outcomes if o.conflict)


__all__ = ["Outcome", "missing_targets", "store_event_feedback", "store_rows"]
