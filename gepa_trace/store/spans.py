"""Writing spans: the one path by which spans enter the store.

Every span becomes a row tuple (``ROW_COLUMNS``) in ``PreparedSpans.add``, which fills
the derived columns (``conventions.derive_values``), serializes the JSON columns, and
notes prompt versions seen for the first time; ``write_prepared`` writes batches of
rows in one transaction. The in-process exporter and ``gepa-trace ingest`` hand
``write_spans`` plain span dicts (``prepare_spans`` + ``write_prepared``); the OTLP
receiver builds the rows straight from protobuf in its request threads
(``collectors.otlp_decode.prepared_batches``) so that its writer thread only binds and
commits. A span already stored (same trace and span id) is skipped, so a client's
retry never duplicates spans.

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
  refused and why (``gepa-trace ingest`` counts them; the in-process exporter logs
  them; the OTLP receiver rejects them in its partial-success answer, checking
  ``refused_times`` before it builds a row). Every path in passes here.
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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from operator import itemgetter
from typing import Any

from sqlalchemy import and_
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gepa_trace.conventions import DERIVED_COLUMNS, derive_values, prompt_template_json
from gepa_trace.errors import FeedbackError
from gepa_trace.store.engine import Store
from gepa_trace.store.feedback_fields import EVENT_NAME, event_feedback
from gepa_trace.store.postgres_writes import AlreadyStored, pipelined_transaction
from gepa_trace.store.prompt_links import (
    link_prompt_spans,
    read_stored_spans,
    update_linked_llm_spans,
)
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


#: The spans table's columns in the order of a row tuple (checked against the table below).
ROW_COLUMNS = ("trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns",
               "status_code", "status_message", "attributes", "events", "resource",
               "service_name") + DERIVED_COLUMNS + ("prompt_flag",)
_COMPONENT, _VERSION, _FLAG = (ROW_COLUMNS.index(c)
                               for c in ("component", "prompt_version", "prompt_flag"))


def resource_columns(resource: Mapping[str, Any]) -> tuple[str, str | None]:
    """(resource JSON, service_name) of one resource: computed once for all its spans."""
    service = resource.get("service.name")
    return _dumps(resource), (str(service)[:255] if service is not None else None)


def refused_times(start: int, end: int, now_ns: int) -> str | None:
    """Why a span starting at ``start`` and ending at ``end`` (ns; 0: not recorded)
    cannot be stored, or None."""
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


def refused_time(span: Mapping[str, Any], now_ns: int) -> str | None:
    """Why ``span``'s times cannot be stored, or None. ``end_ns`` 0 or absent means
    "not recorded" (stored as the start, as before)."""
    try:
        start = int(span.get("start_ns") or 0)
        end = int(span.get("end_ns") or 0)
    except (TypeError, ValueError, OverflowError):
        return "span time is not a number of nanoseconds"
    return refused_times(start, end, now_ns)


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


@dataclass
class PreparedSpans:
    """Rows of a batch of spans, computed before the transaction: ``add`` builds them
    (``prepare_spans`` from span dicts, the OTLP receiver straight from protobuf).

    ``rows`` are tuples in ``ROW_COLUMNS`` order, what the insert binds; ``links`` are
    the few columns ``store.prompt_links`` joins on, of the rows that take part in the
    join (with ``_at``, the row's index), so that the writer touches no other row.
    """

    rows: list[tuple] = field(default_factory=list)
    versions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    now: float = field(default_factory=time.time)
    feedback: list[dict[str, Any]] | None = None  # rows of gepa.feedback events
    refused: dict[str, int] = field(default_factory=dict)  # {reason: spans} not stored
    links: list[dict[str, Any]] = field(default_factory=list)

    @property
    def flagged(self) -> int:
        """How many of the rows are flagged (``prompt_flag``)."""
        return sum(1 for r in self.rows if r[_FLAG] is not None)

    def add(self, trace_id: str, span_id: str, parent_span_id: str | None, name: str,
            kind: str, start_ns: int, end_ns: int, status_code: str,
            status_message: str | None, attributes: Mapping[str, Any],
            events: list[dict[str, Any]] | None, resource: Mapping[str, Any],
            resource_json: str, service_name: str | None) -> None:
        """The row of one span whose times passed ``refused_times``; ``end_ns`` is
        already the start when not recorded, ``resource_json`` and ``service_name`` are
        ``resource_columns(resource)``. Also notes the span's first-seen prompt version,
        its ``gepa.feedback`` events and its part in the PROMPT/LLM join."""
        derived = derive_values(attributes, name, resource)
        component, version = derived[1], derived[4]
        flag = None
        if component and version:
            # ours (gepa.prompt.template) or a foreign convention's (conventions.py)
            template = prompt_template_json(attributes)
            if template:
                if not template_matches(version, template):
                    flag = INCONSISTENT
                elif (component, version) not in self.versions:
                    self.versions[(component, version)] = {
                        "component": component, "version": version, "agent": derived[0],
                        "template": template, "origin": "observed",
                        "first_seen": self.now, "last_seen": self.now}
        if events:
            self._event_feedback(trace_id, span_id, parent_span_id, events)
        span_type = derived[2]
        # Our own instrumentation (gepa.agent) attributes LLM spans itself; the join of
        # foreign PROMPT spans to their LLM siblings leaves its spans alone, except that
        # a PROMPT of the same batch completes one without a version as it would a
        # stored one (``_ours``: see store/prompt_links.py).
        if (span_type == "llm" and version is None and parent_span_id is not None) \
                or (span_type == "prompt" and version and parent_span_id):
            ours = "gepa.agent" in attributes
            if not ours or span_type == "llm":
                self.links.append({
                    "trace_id": trace_id, "span_id": span_id,
                    "parent_span_id": parent_span_id, "span_type": span_type,
                    "component": component, "prompt_version": version,
                    "prompt_flag": flag, "start_ns": start_ns, "end_ns": end_ns,
                    "_at": len(self.rows), "_ours": ours})
        self.rows.append((trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns,
                          status_code, status_message, _dumps(attributes),
                          _dumps(events) if events else "[]", resource_json, service_name,
                          *derived, flag))

    def _event_feedback(self, trace_id: str, span_id: str, parent_span_id: str | None,
                        events: list[dict[str, Any]]) -> None:
        malformed = 0
        for event in events:
            if event.get("name") != EVENT_NAME:
                continue
            span = {"trace_id": trace_id, "span_id": span_id,
                    "parent_span_id": parent_span_id}
            try:
                feedback = event_feedback(span, event)
            except FeedbackError:
                malformed += 1
                continue
            if self.feedback is None:
                self.feedback = []
            self.feedback.append(feedback)
        if malformed:
            _skip_feedback_events("malformed", malformed)

    def adopt_links(self) -> None:
        """Copy what ``store.prompt_links`` gave the LLM rows of ``links`` into ``rows``."""
        for link in self.links:
            if link["span_type"] == "llm" and link["prompt_version"] is not None:
                row = self.rows[link["_at"]]
                if row[_VERSION] is None:
                    self.rows[link["_at"]] = (
                        *row[:_COMPONENT], link["component"], *row[_COMPONENT + 1:_VERSION],
                        link["prompt_version"], *row[_VERSION + 1:_FLAG], link["prompt_flag"])


def prepare_spans(spans: Sequence[Mapping[str, Any]]) -> PreparedSpans:
    """The rows and first-seen prompt versions of ``spans`` (span dicts), without
    touching the store.

    Pure Python and thread-safe. Spans whose times cannot be stored are left out and
    counted in ``refused`` (see the module docstring).
    """
    prepared = PreparedSpans()
    now_ns = int(prepared.now * 1e9)
    refused = prepared.refused
    resources: dict[int, tuple[str, str | None]] = {}
    for span in spans:
        reason = refused_time(span, now_ns)
        if reason is not None:
            refused[reason] = refused.get(reason, 0) + 1
            continue
        resource = span.get("resource") or {}
        # spans of one OTLP resource share one dict: serialized once per batch
        columns = resources.get(id(resource)) if resource else None
        if columns is None:
            columns = resources[id(resource)] = resource_columns(resource)
        start = int(span["start_ns"])
        prepared.add(span["trace_id"], span["span_id"], span.get("parent_span_id"),
                     span.get("name") or "", span.get("kind") or "INTERNAL", start,
                     int(span.get("end_ns") or start), span.get("status_code") or "UNSET",
                     span.get("status_message"), span.get("attributes") or {},
                     span.get("events") or None, resource, *columns)
    return prepared


_SPAN_COLUMNS = tuple(c.name for c in _SPANS.columns)
if _SPAN_COLUMNS != ROW_COLUMNS:  # a column added to SpanRow must be added here too
    raise RuntimeError(f"store.spans.ROW_COLUMNS {ROW_COLUMNS} differ from the spans "
                       f"table's {_SPAN_COLUMNS}")


_primary_key = itemgetter(0, 1)  # (trace_id, span_id)
# Parameters per statement: SQLite binds at most 32766 since 3.32, 999 before.
_SQLITE_ROWS_PER_INSERT = (32766 if sqlite3.sqlite_version_info >= (3, 32) else 999) \
    // len(_SPAN_COLUMNS)


def _insert_span_rows(conn: Any, values: Sequence[tuple]) -> None:
    """SQLite: insert ``values`` (sorted by primary key), skipping spans already stored."""
    # Plain DBAPI, not SQLAlchemy's insert(): its per-row parameter handling cost as
    # much as the database's work. ON CONFLICT DO NOTHING skips spans already stored,
    # and only those. On SQLite, many rows per statement: sqlite3's executemany releases
    # and retakes the GIL for every row, and under a busy receiver each retake waits for
    # the request threads; one statement per ~1400 rows takes it once.
    head = f"INSERT INTO {_SPANS.name} ({', '.join(_SPAN_COLUMNS)}) VALUES "
    group = f"({', '.join(['?'] * len(_SPAN_COLUMNS))})"
    for start in range(0, len(values), _SQLITE_ROWS_PER_INSERT):
        chunk = values[start:start + _SQLITE_ROWS_PER_INSERT]
        sql = f"{head}{', '.join([group] * len(chunk))} ON CONFLICT DO NOTHING"
        conn.exec_driver_sql(sql, tuple(chain.from_iterable(chunk)))


def write_prepared(store: Store, batches: Sequence[PreparedSpans],
                   connection: Connection | None = None) -> int:
    """Store prepared batches in one transaction; returns how many spans were handed in.

    ``connection`` (PostgreSQL; ignored on SQLite): a connection of ``store``, not in a
    transaction, to write on instead of one from the pool; the collector's writer keeps
    one across transactions, since taking one from the pool pings the server first, one
    more round trip per transaction. After a failure it may be unusable
    (``connection.invalidated``).
    """
    count = sum(len(b.rows) for b in batches)
    if not count:
        return 0
    try:
        _write_transaction(store, batches, True, connection)
    except AlreadyStored:  # rolled back: again, skipping the spans already stored
        _write_transaction(store, batches, False, connection)
    return count


@contextmanager
def _transaction(store: Store, connection: Connection | None) -> Iterator[Connection]:
    if connection is None or store.dialect == "sqlite":
        with store.write() as conn:
            yield conn
    else:
        with connection.begin():
            yield connection


def _write_transaction(store: Store, batches: Sequence[PreparedSpans], straight: bool,
                       connection: Connection | None) -> None:
    """One transaction: PROMPT/LLM joins, the rows, the joins' updates of stored spans,
    first-seen prompt versions, feedback of span events. On PostgreSQL the rows go by
    COPY (``straight``, or through staging after ``AlreadyStored``) and the statements
    around it in pipelines (``store.postgres_writes``), as few round trips as raw COPY."""
    versions: dict[tuple[str, str], dict[str, Any]] = {}
    for batch in batches:
        for key, value in batch.versions.items():
            versions.setdefault(key, value)
    now = max(b.now for b in batches)
    new_versions = [{**v, "last_seen": now} for v in versions.values()]
    links = [link for b in batches for link in b.links]
    feedback = [f for b in batches for f in (b.feedback or ())]
    with _transaction(store, connection) as conn:
        if store.dialect == "sqlite":
            updates = _link(links, batches, partial(read_stored_spans, conn))
            _insert_span_rows(conn, _sorted_rows(batches))
            update_linked_llm_spans(conn, updates)
            if new_versions:
                _record_versions(conn, new_versions)
            if feedback:
                _store_event_feedback(conn, feedback)
            return
        with pipelined_transaction(conn) as transaction:
            updates = _link(links, batches, transaction.read_stored_spans)
            transaction.copy_span_rows(_SPAN_COLUMNS, _sorted_rows(batches), straight)
            transaction.finish(updates, new_versions, commit=not feedback)
            if feedback:
                _store_event_feedback(conn, feedback)
                transaction.commit()


def _link(links: list[dict[str, Any]], batches: Sequence[PreparedSpans],
          read_stored: Any) -> list[dict[str, Any]]:
    # An OpenInference LLM span takes the template of its sibling PROMPT span,
    # whichever of the two arrives first (store/prompt_links.py).
    updates = link_prompt_spans(links, read_stored) if links else []
    for batch in batches:
        batch.adopt_links()
    return updates


def _sorted_rows(batches: Sequence[PreparedSpans]) -> list[tuple]:
    # In primary-key order, the batch walks the key index once from left to right
    # instead of dirtying random pages (-25% insert time at 160k stored spans).
    return sorted((r for b in batches for r in b.rows), key=_primary_key)


def _record_versions(conn: Any, versions: list[dict[str, Any]]) -> None:
    """SQLite: insert the versions not stored yet; every one's ``last_seen`` becomes its
    ``last_seen`` (one statement: an update per version was a round trip each)."""
    from sqlalchemy.dialects.sqlite import insert

    statement = insert(_VERSIONS)
    conn.execute(statement.on_conflict_do_update(
        index_elements=[_VERSIONS.c.component, _VERSIONS.c.version],
        set_={"last_seen": statement.excluded.last_seen}), versions)


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
