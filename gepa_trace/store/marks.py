"""A user's marks on recorded runs as examples: ``excluded`` or ``golden``.

An excluded run never reaches the optimizer (``replay.dataset`` leaves it out, saying
so); a golden run always goes to validation. A run has at most one mark, kept per
agent (the agent of the trace's root span); setting a mark replaces the run's earlier
one, ``clear_mark`` removes it. ``golden_ids_in`` reads a file of trace ids for
``--golden FILE`` (pinned to validation for one command, nothing stored).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, select

from gepa_trace.errors import ConfigError, FeedbackError, NotFoundError
from gepa_trace.store.engine import Store, open_store, safe_url
from gepa_trace.store.feedback import csv_records, jsonl_records
from gepa_trace.store.queries import resolve_trace_id
from gepa_trace.store.tables import ExampleMarkRow, SpanRow

MARKS = ("excluded", "golden")
_MARKS = ExampleMarkRow.__table__
_SPANS = SpanRow.__table__


@dataclass(frozen=True)
class ExampleMark:
    agent: str
    trace_id: str
    mark: str  # excluded | golden
    reason: str | None
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_of(store: Store | str | None, trace_id: str) -> tuple[str, str]:
    """(full trace id, agent) of the production run ``trace_id`` names (a unique
    prefix of 6+ hex characters will do). ``NotFoundError`` when no such trace is
    stored; ``ConfigError`` when it is an optimizer rollout or its root span names no
    agent."""
    store = open_store(store)
    full = resolve_trace_id(store, trace_id)
    with store.read() as conn:
        root = conn.execute(select(_SPANS.c.agent, _SPANS.c.run_id)
                            .where(_SPANS.c.trace_id == full, _SPANS.c.parent_span_id.is_(None))
                            .order_by(_SPANS.c.start_ns).limit(1)).first()
    if root is None:
        raise NotFoundError(f"no run {full} in the store {safe_url(store.url)} (no trace "
                            "with that id and a root span)")
    if root.run_id is not None:
        raise ConfigError(f"trace {full} is a rollout of optimization run {root.run_id}, "
                          "not a production run")
    if not root.agent:
        raise ConfigError(f"trace {full} names no agent on its root span, so it is no "
                          "agent's example")
    return full, root.agent


def set_mark(store: Store | str | None, trace_ids: Iterable[str], mark: str,
             reason: str | None = None) -> list[ExampleMark]:
    """Mark the runs ``trace_ids`` (all checked first: none is marked when one is
    unknown) as ``excluded`` or ``golden``, replacing their earlier mark."""
    if mark not in MARKS:
        raise ConfigError(f"mark must be one of {', '.join(MARKS)}, got {mark!r}")
    store = open_store(store)
    runs = dict(run_of(store, t) for t in trace_ids)
    now = time.time()
    marks = [ExampleMark(agent, trace, mark, reason or None, now) for trace, agent in runs.items()]
    with store.write() as conn:
        for m in marks:
            conn.execute(delete(_MARKS).where(and_(_MARKS.c.agent == m.agent,
                                                   _MARKS.c.trace_id == m.trace_id)))
            conn.execute(_MARKS.insert().values(**m.to_dict()))
    return marks


def clear_mark(store: Store | str | None, trace_id: str) -> ExampleMark | None:
    """Remove the mark of the run ``trace_id``; the mark it had, or None."""
    store = open_store(store)
    trace, agent = run_of(store, trace_id)
    found = marks_of(store, agent, [trace]).get(trace)
    if found is not None:
        with store.write() as conn:
            conn.execute(delete(_MARKS).where(and_(_MARKS.c.agent == agent,
                                                   _MARKS.c.trace_id == trace)))
    return found


def marks_of(store: Store | str | None, agent: str,
             trace_ids: Iterable[str] | None = None) -> dict[str, ExampleMark]:
    """The marks on ``agent``'s runs (only ``trace_ids`` when given), by trace id."""
    store = open_store(store)
    query = select(_MARKS).where(_MARKS.c.agent == agent)
    if trace_ids is not None:
        query = query.where(_MARKS.c.trace_id.in_(list(trace_ids)))
    with store.read() as conn:
        rows = conn.execute(query).all()
    return {r.trace_id: ExampleMark(r.agent, r.trace_id, r.mark, r.reason, r.created_at)
            for r in rows}


def golden_ids_in(path: str | Path) -> tuple[str, ...]:
    """The trace ids in a ``--golden`` file: one per line (``#`` starts a comment), a
    CSV with a ``trace_id`` column, or JSONL objects with a ``trace_id`` key. The
    format comes from the extension (.csv, .jsonl/.ndjson/.json), else from the first
    line. ``ConfigError`` naming the line when one cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the golden file {path}: {exc}") from None
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json") or first.startswith("{"):
        ids = []
        for number, record in jsonl_records(text):
            if isinstance(record, str) and record.startswith("not valid JSON"):
                raise ConfigError(f"{path}:{number}: {record}")
            if not isinstance(record, dict) or not record.get("trace_id"):
                raise ConfigError(f"{path}:{number}: no trace_id in this line")
            ids.append(str(record["trace_id"]))
    elif suffix == ".csv" or "," in first:
        try:
            records = list(csv_records(text))
        except FeedbackError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        bad = next(((line, r) for line, r in records if isinstance(r, str)), None)
        if bad is not None:
            raise ConfigError(f"{path}:{bad[0]}: {bad[1]}")
        ids = [str(r["trace_id"]) for _line, r in records if (r.get("trace_id") or "").strip()]
    else:
        ids = [line.split("#", 1)[0] for line in lines]
        ids = [i for i in ids if i.strip() and i.strip().lower() != "trace_id"]
    ids = [i.strip().lower() for i in ids]
    if not ids:
        raise ConfigError(f"the golden file {path} holds no trace id")
    return tuple(dict.fromkeys(ids))


__all__ = ["MARKS", "ExampleMark", "clear_mark", "golden_ids_in", "marks_of", "run_of",
           "set_mark"]
