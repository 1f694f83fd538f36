"""Writing spans: the one path by which spans enter the store.

Both the in-process exporter and the OTLP receiver hand ``write_spans`` plain span
dicts; it fills the derived columns (``collectors.conventions.derive``), serializes the
JSON columns, records prompt versions seen for the first time, and writes everything
in one transaction. A span already stored (same trace and span id) is skipped, so a
client's retry never duplicates spans.

A span dict has: trace_id (32 hex), span_id (16 hex), parent_span_id (16 hex or None),
name, kind, start_ns, end_ns, status_code (UNSET|OK|ERROR), status_message,
attributes (dict), events (list of {name, time_ns, attributes}), resource (dict).
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping, Sequence

from sqlalchemy import and_, update

from gepa_trace.collectors.conventions import derive
from gepa_trace.store.engine import Store
from gepa_trace.store.tables import PromptVersionRow, SpanRow

_SPANS = SpanRow.__table__
_VERSIONS = PromptVersionRow.__table__


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def span_row(span: Mapping[str, Any]) -> dict[str, Any]:
    """The spans-table row of one span dict."""
    attributes = span.get("attributes") or {}
    resource = span.get("resource") or {}
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
        "events": _dumps(span.get("events") or []),
        "resource": _dumps(resource),
        "service_name": resource.get("service.name"),
    }
    row.update(derive(attributes, name=row["name"], resource=resource))
    return row


def _prompt_versions(spans: Sequence[Mapping[str, Any]], rows: Sequence[dict[str, Any]],
                     now: float) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for span, row in zip(spans, rows):
        template = (span.get("attributes") or {}).get("gepa.prompt.template")
        if not template or not row["component"] or not row["prompt_version"]:
            continue
        key = (row["component"], row["prompt_version"])
        if key not in found:
            found[key] = {"component": key[0], "version": key[1], "agent": row["agent"],
                          "template": template if isinstance(template, str) else _dumps(template),
                          "origin": "observed", "first_seen": now, "last_seen": now}
    return found


def write_spans(store: Store, spans: Sequence[Mapping[str, Any]]) -> int:
    """Store ``spans`` in one transaction; returns how many were handed in."""
    if not spans:
        return 0
    rows = [span_row(s) for s in spans]
    now = time.time()
    versions = _prompt_versions(spans, rows, now)
    with store.write() as conn:
        store.insert_ignoring_duplicates(conn, _SPANS, rows)
        if versions:
            store.insert_ignoring_duplicates(conn, _VERSIONS, list(versions.values()))
            for component, version in versions:
                conn.execute(update(_VERSIONS)
                             .where(and_(_VERSIONS.c.component == component,
                                         _VERSIONS.c.version == version))
                             .values(last_seen=now))
    return len(rows)
