"""Writing spans: the one path by which spans enter the store.

Both the in-process exporter and the OTLP receiver hand ``write_spans`` plain span
dicts; it fills the derived columns (``conventions.derive``), serializes the
JSON columns, records prompt versions seen for the first time, and writes everything
in one transaction. A span already stored (same trace and span id) is skipped, so a
client's retry never duplicates spans.

A span dict has: trace_id (32 hex), span_id (16 hex), parent_span_id (16 hex or None),
name, kind, start_ns, end_ns, status_code (UNSET|OK|ERROR), status_message,
attributes (dict), events (list of {name, time_ns, attributes}), resource (dict).

An event named ``gepa.feedback`` is also a feedback record on its span's trace
(``store.feedback_fields.event_feedback``), stored in the same transaction and as
idempotently as the span. A malformed one is skipped, never failing the spans: it is
counted (``skipped_feedback_events``) and logged without its text.

Two checks keep made-up spans from steering the optimizer (issue 18):

- Times: a span that starts more than ``MAX_CLOCK_SKEW_NS`` after this process's clock,
  has no start time, a time beyond int64, or ends before it starts is refused, alone:
  the others of its batch are stored and ``PreparedSpans.refused`` says how many were
  refused and why (the OTLP receiver answers with a partial success; ``gepa-trace
  ingest`` counts them; the in-process exporter logs them). Every path in passes here.
- Prompt versions: a version is the content hash of its template. A span whose
  declared version is not the hash of the template it carries is stored with
  ``prompt_flag = "inconsistent"``; its template is not recorded under that version,
  and it never counts toward a run's seed (``prompts.seed``). A span that names a
  version without carrying a template is not checked here: its version only matters
  if a consistent span recorded that version's template.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

from sqlalchemy import and_, update
from sqlalchemy.exc import IntegrityError

from gepa_trace.conventions import derive, prompt_template_json
from gepa_trace.errors import FeedbackError
from gepa_trace.store.engine import Store
from gepa_trace.store.feedback_fields import EVENT_NAME, event_feedback
from gepa_trace.store.prompt_links import fix_up_linked_llm_spans, link_prompt_spans
from gepa_trace.store.tables import PromptVersionRow, SpanRow

log = logging.getLogger(__name__)

_SPANS = SpanRow.__table__
_VERSIONS = PromptVersionRow.__table__

#: How far after this process's clock a span may start. Clients' clocks drift by
#: seconds or minutes; a day covers any honest one, and a span from next year is no
#: run that happened (it would outrank every real run in "most recent").
MAX_CLOCK_SKEW_NS = 24 * 3600 * 10**9
_INT64_MAX = 2**63 - 1  # the spans table's BIGINT
INCONSISTENT = "inconsistent"  # SpanRow.prompt_flag: version is not its template's hash
_skipped_lock = threading.Lock()
_skipped = {"malformed": 0, "conflicting": 0}


def skipped_feedback_events() -> dict[str, int]:
    """How many ``gepa.feedback`` events this process skipped: ``malformed`` (a field
    refused) and ``conflicting`` (a feedback_id already recorded with other content)."""
    with _skipped_lock:
        return dict(_skipped)


def _skip_feedback_events(kind: str, count: int) -> None:
    with _skipped_lock:
        first = _skipped[kind] == 0
        _skipped[kind] += count
    # Once per kind and process: a client that keeps sending bad events must not flood
    # the log. No event text: it is user data.
    if first:
        log.warning("skipped %d %s gepa.feedback span event(s); their spans are stored "
                    "(this warning is given once; see skipped_feedback_events())",
                    count, kind)


# One encoder for every span: json.dumps() with these options builds a new encoder per
# call, which cost as much as the encoding of a typical span's attributes; and
# JSONEncoder.encode still builds its C encoder per call (a third of encoding a span's
# attributes), so the C encoder is built once, with encode()'s very options but no
# circular-reference markers (shared by threads, and left dirty by a failed call; span
# values come from OTLP or the OTel SDK and hold no cycles). Its output is
# JSONEncoder.encode's (tests/test_otlp_stored_rows.py pins it).
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
_c_encode = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, True)


def _dumps(value: Any) -> str:
    if _c_encode is None or isinstance(value, str):
        return _encoder.encode(value)
    return "".join(_c_encode(value, 0))


def span_row(span: Mapping[str, Any], _resource_json: dict | None = None) -> dict[str, Any]:
    """The spans-table row of one span dict."""
    attributes = span.get("attributes") or {}
    resource = span.get("resource") or {}
    if _resource_json is None or not resource:
        resource_text = _dumps(resource)
    else:  # spans of one OTLP resource share one dict: serialize it once per batch
        resource_text = _resource_json.get(id(resource))
        if resource_text is None:
            resource_text = _resource_json[id(resource)] = _dumps(resource)
    service = resource.get("service.name")
    row = {
        "trace_id": span["trace_id"],
        "span_id": span["span_id"],
        "parent_span_id": span.get("parent_span_id"),
        "name": span.get("name") or "",
        "kind": span.get("kind") or "INTERNAL",
        "start_ns": int(span["start_ns"]),
        "end_ns": int(span.get("end_ns") or span["start_ns"]),
        "status_code": span.get("status_code") or "UNSET",
        "status_message": span.get("status_message"),
        "attributes": _dumps(attributes),
        "events": _dumps(events) if (events := span.get("events")) else "[]",
        "resource": resource_text,
        "service_name": str(service)[:255] if service is not None else None,
        "prompt_flag": None,  # set by _prompt_versions
    }
    row.update(derive(attributes, name=row["name"], resource=resource))
    if "gepa.agent" in attributes:
        # Written by our own instrumentation, which attributes LLM spans itself; the
        # join of foreign PROMPT spans to their LLM siblings must leave it alone. (Not a
        # column: the insert takes only the table's columns.)
        row["_ours"] = True
    return row


def refused_time(span: Mapping[str, Any], now_ns: int) -> str | None:
    """Why ``span``'s times cannot be stored, or None. ``end_ns`` 0 or absent means
    "not recorded" (stored as the start, as before)."""
    try:
        start = int(span.get("start_ns") or 0)
        end = int(span.get("end_ns") or 0)
    except (TypeError, ValueError, OverflowError):
        return "span time is not a number of nanoseconds"
    if start <= 0:
        return "span without a start time"
    if start > _INT64_MAX:
        return "start time beyond int64 (2^63 ns)"
    if start > now_ns + MAX_CLOCK_SKEW_NS:
        return (f"start time more than {MAX_CLOCK_SKEW_NS // (3600 * 10**9)} hours after "
                "the collector's clock")
    if end > _INT64_MAX:
        return "end time beyond int64 (2^63 ns)"
    if end and end < start:
        return "span ends before it starts"
    return None


def _refuse_bad_times(spans: Sequence[Mapping[str, Any]], now_ns: int
                      ) -> tuple[Sequence[Mapping[str, Any]], dict[str, int]]:
    """(the spans whose times can be stored, {reason: count} of the others)."""
    refused: dict[str, int] = {}
    kept: list[Mapping[str, Any]] | None = None
    for index, span in enumerate(spans):
        reason = refused_time(span, now_ns)
        if reason is None:
            if kept is not None:
                kept.append(span)
            continue
        if kept is None:  # the common case copies nothing
            kept = list(spans[:index])
        refused[reason] = refused.get(reason, 0) + 1
    return (spans if kept is None else kept), refused


_consistent: dict[tuple[str, str], bool] = {}


def template_matches(version: str, template: str) -> bool:
    """Whether ``version`` is the content hash of ``template`` (messages JSON), as
    ``prompts.templates.template_version`` computes it."""
    key = (version, template)
    known = _consistent.get(key)
    if known is None:
        from gepa_trace.prompts.templates import template_version

        try:
            messages = json.loads(template)
        except ValueError:
            messages = None
        known = isinstance(messages, list) and template_version(messages) == version
        if len(_consistent) >= 1024:  # a few templates per agent; bound what a client sends
            _consistent.clear()
        _consistent[key] = known
    return known


def _prompt_versions(spans: Sequence[Mapping[str, Any]], rows: Sequence[dict[str, Any]],
                     now: float) -> dict[tuple[str, str], dict[str, Any]]:
    """The first-seen versions of ``rows``; flags (``prompt_flag``) the rows whose
    declared version is not the hash of the template they carry."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for span, row in zip(spans, rows):
        if not row["component"] or not row["prompt_version"]:
            continue
        # ours (gepa.prompt.template) or a foreign convention's (conventions.py)
        template = prompt_template_json(span.get("attributes") or {})
        if not template:
            continue
        if not template_matches(row["prompt_version"], template):
            row["prompt_flag"] = INCONSISTENT
            continue
        key = (row["component"], row["prompt_version"])
        if key in found:
            continue
        found[key] = {"component": key[0], "version": key[1], "agent": row["agent"],
                      "template": template, "origin": "observed",
                      "first_seen": now, "last_seen": now}
    return found


@dataclass
class PreparedSpans:
    """Rows of a batch of spans, computed before the transaction (see ``prepare_spans``)."""

    rows: list[dict[str, Any]]
    versions: dict[tuple[str, str], dict[str, Any]]
    now: float
    feedback: list[dict[str, Any]] | None = None  # rows of gepa.feedback events
    refused: dict[str, int] = field(default_factory=dict)  # {reason: spans} not stored

    @property
    def flagged(self) -> int:
        """How many of the rows are flagged (``prompt_flag``)."""
        return sum(1 for r in self.rows if r["prompt_flag"] is not None)


def _event_feedback(spans: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    found, malformed = [], 0
    for span in spans:
        for event in span.get("events") or ():
            if event.get("name") != EVENT_NAME:
                continue
            try:
                found.append(event_feedback(span, event))
            except FeedbackError:
                malformed += 1
    if malformed:
        _skip_feedback_events("malformed", malformed)
    return found


def prepare_spans(spans: Sequence[Mapping[str, Any]]) -> PreparedSpans:
    """The rows and first-seen prompt versions of ``spans``, without touching the store.

    Pure Python and thread-safe: the OTLP receiver runs it in its request threads so
    that its single writer thread only runs transactions. Spans whose times cannot be
    stored are left out and counted in ``refused`` (see the module docstring).
    """
    now = time.time()
    spans, refused = _refuse_bad_times(spans, int(now * 1e9))
    resource_json: dict[int, str] = {}
    rows = [span_row(s, resource_json) for s in spans]
    feedback = _event_feedback(spans) if any(s.get("events") for s in spans) else None
    return PreparedSpans(rows, _prompt_versions(spans, rows, now), now, feedback, refused)


_SPAN_COLUMNS = tuple(c.name for c in _SPANS.columns)


_row_values = itemgetter(*_SPAN_COLUMNS)  # span_row() fills every column
_primary_key = itemgetter(_SPAN_COLUMNS.index("trace_id"), _SPAN_COLUMNS.index("span_id"))
# Parameters per statement: SQLite binds at most 32766 since 3.32, 999 before.
_SQLITE_ROWS_PER_INSERT = (32766 if sqlite3.sqlite_version_info >= (3, 32) else 999) \
    // len(_SPAN_COLUMNS)


def _insert_span_rows(conn: Any, rows: Sequence[dict[str, Any]]) -> None:
    # Plain DBAPI, not SQLAlchemy's insert(): its per-row parameter handling cost as
    # much as the database's work. ON CONFLICT DO NOTHING (SQLite >= 3.24, PostgreSQL)
    # skips spans already stored, and only those.
    values = [_row_values(r) for r in rows]
    # In primary-key order, the batch walks the key index once from left to right
    # instead of dirtying random pages (-25% insert time at 160k stored spans).
    values.sort(key=_primary_key)
    head = f"INSERT INTO {_SPANS.name} ({', '.join(_SPAN_COLUMNS)}) VALUES "
    if conn.dialect.name != "sqlite":
        _copy_span_rows(conn, values)
        return
    # On SQLite, many rows per statement: sqlite3's executemany releases and retakes
    # the GIL for every row, and under a busy receiver each retake waits for the
    # request threads; one statement per ~1400 rows takes it once.
    group = f"({', '.join(['?'] * len(_SPAN_COLUMNS))})"
    for start in range(0, len(values), _SQLITE_ROWS_PER_INSERT):
        chunk = values[start:start + _SQLITE_ROWS_PER_INSERT]
        sql = f"{head}{', '.join([group] * len(chunk))} ON CONFLICT DO NOTHING"
        conn.exec_driver_sql(sql, tuple(chain.from_iterable(chunk)))


def _copy_span_rows(conn: Any, values: Sequence[tuple]) -> None:
    """PostgreSQL: COPY the rows straight into the spans table, inside a savepoint.

    COPY cannot skip a span already stored: when one is (a client's retry, or another
    collector storing the same span at the same moment), the savepoint is rolled back
    and the rows go through a session-local staging table and one INSERT ... SELECT ...
    ON CONFLICT DO NOTHING instead. The straight path skips that second copy of every
    row, which cost more than the COPY itself. Rows come sorted by primary key on both
    paths, so two writers inserting overlapping batches (two collectors) wait on each
    other's keys in the same order and cannot deadlock. The staging table empties itself at commit (a
    rollback discards its rows too); it is created in the same transaction, so a
    rollback never leaves a connection believing it has one.
    """
    from psycopg import errors

    columns = ", ".join(_SPAN_COLUMNS)
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute("SAVEPOINT gepa_trace_copy")
        try:
            _copy(cursor, _SPANS.name, columns, values)
        except errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT gepa_trace_copy")
            cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} "
                           f"(LIKE {_SPANS.name}) ON COMMIT DELETE ROWS")
            _copy(cursor, _STAGING, columns, values)
            cursor.execute(f"INSERT INTO {_SPANS.name} ({columns}) SELECT {columns} "
                           f"FROM {_STAGING} ORDER BY trace_id, span_id "
                           "ON CONFLICT DO NOTHING")
        cursor.execute("RELEASE SAVEPOINT gepa_trace_copy")
    finally:
        cursor.close()


def _copy(cursor: Any, table: str, columns: str, values: Sequence[tuple]) -> None:
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in values:
            copy.write_row(row)


_STAGING = "gepa_trace_spans_staging"


def write_prepared(store: Store, batches: Sequence[PreparedSpans]) -> int:
    """Store prepared batches in one transaction; returns how many spans were handed in."""
    rows = batches[0].rows if len(batches) == 1 else [r for b in batches for r in b.rows]
    if not rows:
        return 0
    versions: dict[tuple[str, str], dict[str, Any]] = {}
    for batch in batches:
        for key, value in batch.versions.items():
            versions.setdefault(key, value)
    now = max(b.now for b in batches)
    with store.write() as conn:
        # An OpenInference LLM span takes the template of its sibling PROMPT span,
        # whichever of the two arrives first (store/prompt_links.py).
        unclaimed_prompts = link_prompt_spans(store, conn, rows)
        _insert_span_rows(conn, rows)
        fix_up_linked_llm_spans(conn, unclaimed_prompts)
        if versions:
            store.insert_ignoring_duplicates(conn, _VERSIONS, list(versions.values()))
            for component, version in versions:
                conn.execute(update(_VERSIONS)
                             .where(and_(_VERSIONS.c.component == component,
                                         _VERSIONS.c.version == version))
                             .values(last_seen=now))
        feedback = [f for b in batches for f in (b.feedback or ())]
        if feedback:
            _store_event_feedback(conn, feedback)
    return len(rows)


def _store_event_feedback(conn: Any, rows: list[dict[str, Any]]) -> None:
    """The spans' feedback, in their transaction, inside a savepoint: a record that
    conflicts with a stored one, or that another writer stores at the same moment, is
    skipped and never fails the spans."""
    from gepa_trace.store.feedback_records import store_event_feedback

    conflicting = 0
    for attempt in (1, 2):
        try:
            with conn.begin_nested():  # a savepoint: undoing it keeps the spans
                conflicting = store_event_feedback(conn, rows)
            break
        except IntegrityError:
            # Another writer stored one of these records at the same moment; the second
            # attempt sees it. Should that fail too, the spans are still stored.
            if attempt == 2:
                log.warning("feedback of %d gepa.feedback span event(s) not stored: "
                            "concurrent writers", len(rows))
    if conflicting:
        _skip_feedback_events("conflicting", conflicting)


def write_spans(store: Store, spans: Sequence[Mapping[str, Any]]) -> int:
    """Store ``spans`` in one transaction; returns how many were handed in and not
    refused (refusals are logged: see the module docstring)."""
    if not spans:
        return 0
    prepared = prepare_spans(spans)
    log_refused(prepared.refused)
    return write_prepared(store, [prepared])


def log_refused(refused: Mapping[str, int], where: str = "") -> None:
    """One warning line for spans refused for their times (none: nothing)."""
    if refused:
        log.warning("%srefused %d span(s): %s", where, sum(refused.values()),
                    "; ".join(f"{reason} ({n})" for reason, n in refused.items()))


def flagged_counts(store: Store, agent: str | None = None) -> dict[str, int]:
    """{component: spans stored with a ``prompt_flag``}, optionally of one agent's spans
    (by their ``agent`` column). Reads only the flagged spans' index."""
    from sqlalchemy import func, select

    # The agent is filtered here, not in SQL: a condition on it would let the planner
    # pick the agent index and read every span of the agent.
    query = (select(_SPANS.c.component, _SPANS.c.agent, func.count())
             .where(_SPANS.c.prompt_flag.isnot(None))
             .group_by(_SPANS.c.component, _SPANS.c.agent))
    counts: dict[str, int] = {}
    with store.read() as conn:
        for component, span_agent, n in conn.execute(query).all():
            if agent is None or span_agent == agent:
                counts[component or ""] = counts.get(component or "", 0) + int(n)
    return counts


def flagged_spans(store: Store, trace_id: str) -> dict[str, str]:
    """{span_id: prompt_flag} of the flagged spans of one trace."""
    from sqlalchemy import select

    query = select(_SPANS.c.span_id, _SPANS.c.prompt_flag).where(
        and_(_SPANS.c.trace_id == trace_id, _SPANS.c.prompt_flag.isnot(None)))
    with store.read() as conn:
        return {span_id: flag for span_id, flag in conn.execute(query).all()}
