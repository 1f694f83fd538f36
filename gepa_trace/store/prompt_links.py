"""Joins across spans: an OpenInference LLM span takes its sibling PROMPT's template.

OpenInference records a ChatPromptTemplate's template (its first message only) on the
PROMPT span, not on the LLM span that used it. ``link_prompt_spans`` gives an LLM span
the component and version of its sibling PROMPT span (same trace, same parent) in the
same batch or in batches stored earlier, and returns the updates of LLM spans stored
before their PROMPT sibling arrived (``update_linked_llm_spans`` applies them after the
insert). Rows are the dicts ``store.spans.PreparedSpans`` makes of the spans that take
part, their derived columns already filled by ``gepa_trace.conventions.derive``.

The stored spans both joins need are read once, before the insert, by one query on the
trace ids (``read_stored_spans``; on PostgreSQL the writer sends it in the same round
trip as its BEGIN). A batch's own spans are not stored yet then; what the join after the
insert would have found among them is found among the batch's rows instead: an LLM
span of our own instrumentation (``_ours``) without a version, which the join before
the insert leaves alone, takes an unclaimed PROMPT sibling of its batch like a stored
one (tests/test_otlp_stored_rows.py pins the rows).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from sqlalchemy import and_, bindparam, select, update

from gepa_trace.store.tables import SpanRow

_SPANS = SpanRow.__table__
#: The columns of a stored span that the joins read.
LINK_COLUMNS = ("trace_id", "span_id", "parent_span_id", "span_type", "component",
                "prompt_version", "start_ns", "end_ns", "prompt_flag")
_TRACES_PER_QUERY = 500  # bound parameters of one IN (...) on SQLite

ReadStored = Callable[[Collection[str]], Iterable[Mapping[str, Any]]]


def _lacks_prompt(row: Mapping[str, Any]) -> bool:
    return (row["span_type"] == "llm" and row["prompt_version"] is None
            and row["parent_span_id"] is not None)


def _best_prompt(llm: Mapping[str, Any], prompts: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    # The PROMPT that rendered this call's input finished just before the call started.
    before = [p for p in prompts if p["end_ns"] <= llm["start_ns"]]
    if before:
        return max(before, key=lambda p: p["end_ns"])
    return min(prompts, key=lambda p: abs(p["start_ns"] - llm["start_ns"]))


def _adopt(llm: dict[str, Any], prompt: Mapping[str, Any]) -> None:
    llm["component"] = prompt["component"]
    llm["prompt_version"] = prompt["prompt_version"]
    # a version the PROMPT span could not vouch for is no better on the call it served
    llm["prompt_flag"] = prompt.get("prompt_flag")


def _by_parent(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list]:
    groups: dict[tuple[str, str], list] = {}
    for row in rows:
        groups.setdefault((row["trace_id"], row["parent_span_id"]), []).append(row)
    return groups


def link_prompt_spans(rows: list[dict[str, Any]], read_stored: ReadStored) -> list[dict]:
    """Before ``rows`` are inserted: give each LLM row without a prompt version the
    component and version of its sibling PROMPT span, found in ``rows`` or in the store
    (``read_stored(trace_ids)``: the stored spans of those traces, ``LINK_COLUMNS``).

    Returns the updates of stored LLM spans that one of this batch's PROMPT rows
    completes, for ``update_linked_llm_spans`` after the insert.
    """
    prompts: dict[tuple[str, str], list] = {}
    waiting, ours = [], []
    for row in rows:  # the rows of PreparedSpans.links: a PROMPT with a version, or an LLM
        if row["span_type"] == "prompt":
            if not row["_ours"]:
                prompts.setdefault((row["trace_id"], row["parent_span_id"]), []).append(row)
        elif _lacks_prompt(row):
            (ours if row["_ours"] else waiting).append(row)
    taken: set[int] = set()
    unlinked = []
    for llm in waiting:
        siblings = prompts.get((llm["trace_id"], llm["parent_span_id"]))
        if siblings:
            best = siblings[0] if len(siblings) == 1 else _best_prompt(llm, siblings)
            taken.add(id(best))
            _adopt(llm, best)
        else:
            unlinked.append(llm)
    unclaimed = _by_parent(p for group in prompts.values() for p in group
                           if id(p) not in taken)
    traces = {r["trace_id"] for r in unlinked} | {trace for trace, _ in unclaimed}
    if not traces:
        return []
    stored = list(read_stored(traces))
    if unlinked:
        offered = _by_parent(r for r in stored if r["span_type"] == "prompt"
                             and r["prompt_version"] and r["parent_span_id"])
        for llm in unlinked:
            siblings = offered.get((llm["trace_id"], llm["parent_span_id"]))
            if siblings:
                _adopt(llm, _best_prompt(llm, siblings))
    if not unclaimed:
        return []
    updates = []
    # LLM spans stored earlier, and this batch's own that the join before the insert
    # leaves alone, take an unclaimed PROMPT of this batch that ended before they started
    # (the batch's other LLM rows took any PROMPT sibling of the batch above).
    for llm in (*stored, *ours):
        if not _lacks_prompt(llm):
            continue
        siblings = [p for p in unclaimed.get((llm["trace_id"], llm["parent_span_id"]), ())
                    if p["end_ns"] <= llm["start_ns"]]
        if not siblings:
            continue
        best = _best_prompt(llm, siblings)
        if "_at" in llm:  # a row of this batch: linked before its insert
            _adopt(llm, best)
        else:
            updates.append({"p_trace": llm["trace_id"], "p_span": llm["span_id"],
                            "p_component": best["component"],
                            "p_version": best["prompt_version"],
                            "p_flag": best.get("prompt_flag")})
    return updates


def stored_spans_query(trace_ids: list[str]) -> Any:
    """The query of ``LINK_COLUMNS`` of the stored spans of ``trace_ids``, by trace id
    only: a filter on span_type would make SQLite pick the span_type index over the
    primary key and scan half the table."""
    return (select(*(_SPANS.c[c] for c in LINK_COLUMNS))
            .where(_SPANS.c.trace_id.in_(trace_ids)))


def read_stored_spans(conn: Any, trace_ids: Collection[str]) -> list[dict[str, Any]]:
    """``LINK_COLUMNS`` of the stored spans of ``trace_ids``, through ``conn``
    (SQLAlchemy), ``_TRACES_PER_QUERY`` traces a query."""
    ordered = sorted(trace_ids)
    out: list[dict[str, Any]] = []
    for start in range(0, len(ordered), _TRACES_PER_QUERY):
        query = stored_spans_query(ordered[start:start + _TRACES_PER_QUERY])
        out.extend(dict(r) for r in conn.execute(query).mappings())
    return out


#: The update ``link_prompt_spans``'s updates bind (p_trace, p_span, p_component,
#: p_version, p_flag).
UPDATE_LINKED = (update(_SPANS)
                 .where(and_(_SPANS.c.trace_id == bindparam("p_trace"),
                             _SPANS.c.span_id == bindparam("p_span")))
                 .values(component=bindparam("p_component"),
                         prompt_version=bindparam("p_version"),
                         prompt_flag=bindparam("p_flag")))


def update_linked_llm_spans(conn: Any, updates: list[dict[str, Any]]) -> int:
    """After the insert: apply ``link_prompt_spans``'s updates through ``conn``
    (SQLAlchemy). Returns the number of LLM spans updated."""
    if updates:
        conn.execute(UPDATE_LINKED, updates)
    return len(updates)
