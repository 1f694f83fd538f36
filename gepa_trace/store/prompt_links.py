"""Joins across spans: an OpenInference LLM span takes its sibling PROMPT's template.

OpenInference records a ChatPromptTemplate's template (its first message only) on the
PROMPT span, not on the LLM span that used it. ``link_prompt_spans`` gives an LLM span
the component and version of its sibling PROMPT span (same trace, same parent) in the
same batch and in batches stored earlier, and ``fix_up_linked_llm_spans`` updates LLM
spans stored before their PROMPT sibling arrived. Rows are the dicts ``store.spans``
inserts, their derived columns already filled by ``gepa_trace.conventions.derive``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, bindparam, select, update

from gepa_trace.store.tables import SpanRow


def _needs_prompt(row: Mapping[str, Any]) -> bool:
    return (row.get("span_type") == "llm" and row.get("prompt_version") is None
            and row.get("parent_span_id") is not None and not row.get("_ours"))


def _offers_prompt(row: Mapping[str, Any]) -> bool:
    return bool(row.get("span_type") == "prompt" and row.get("parent_span_id")
                and row.get("prompt_version") and not row.get("_ours"))


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


def link_prompt_spans(store: Any, conn: Any,
                      rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Before ``rows`` are inserted: give each LLM row without a prompt version the
    component and version of its sibling PROMPT span, found in ``rows`` or in the store.

    Returns the PROMPT rows that no LLM row of this batch took: their LLM sibling may
    have been stored earlier; pass them to ``fix_up_linked_llm_spans`` after the insert.
    """
    prompts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    waiting: list[dict[str, Any]] = []
    for row in rows:
        if _offers_prompt(row):
            prompts.setdefault((row["trace_id"], row["parent_span_id"]), []).append(row)
        elif _needs_prompt(row):
            waiting.append(row)
    taken: set[int] = set()
    unlinked = []
    for llm in waiting:
        siblings = prompts.get((llm["trace_id"], llm["parent_span_id"]))
        if siblings:
            best = _best_prompt(llm, siblings)
            taken.add(id(best))
            _adopt(llm, best)
        else:
            unlinked.append(llm)
    if unlinked:
        _link_with_stored(conn, unlinked)
    return [p for group in prompts.values() for p in group if id(p) not in taken]


def _stored_spans_of_traces(conn: Any, trace_ids: set[str]) -> list[dict[str, Any]]:
    """Derived columns of the stored spans of ``trace_ids``, read by trace id only:
    a filter on span_type would make SQLite pick the span_type index over the primary
    key and scan half the table."""
    t = SpanRow.__table__
    ordered = sorted(trace_ids)
    out: list[dict[str, Any]] = []
    for start in range(0, len(ordered), 500):
        query = (select(t.c.trace_id, t.c.span_id, t.c.parent_span_id, t.c.span_type,
                        t.c.component, t.c.prompt_version, t.c.start_ns, t.c.end_ns,
                        t.c.prompt_flag)
                 .where(t.c.trace_id.in_(ordered[start:start + 500])))
        out.extend(dict(r) for r in conn.execute(query).mappings())
    return out


def _link_with_stored(conn: Any, llms: list[dict[str, Any]]) -> None:
    stored: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in _stored_spans_of_traces(conn, {r["trace_id"] for r in llms}):
        if r["span_type"] == "prompt" and r["prompt_version"] and r["parent_span_id"]:
            stored.setdefault((r["trace_id"], r["parent_span_id"]), []).append(r)
    for llm in llms:
        siblings = stored.get((llm["trace_id"], llm["parent_span_id"]))
        if siblings:
            _adopt(llm, _best_prompt(llm, siblings))


def fix_up_linked_llm_spans(conn: Any, rows: list[dict[str, Any]]) -> int:
    """After the batch is inserted: LLM spans stored earlier without a prompt version get
    the component and version of a PROMPT sibling in ``rows`` (the PROMPT rows that
    ``link_prompt_spans`` returned). Returns the number of LLM spans updated."""
    prompts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if _offers_prompt(r):
            prompts.setdefault((r["trace_id"], r["parent_span_id"]), []).append(r)
    if not prompts:
        return 0
    changes = []
    for stored in _stored_spans_of_traces(conn, {trace for trace, _ in prompts}):
        if not _needs_prompt(stored):
            continue  # this batch's own LLM spans were linked before the insert
        siblings = [p for p in prompts.get((stored["trace_id"], stored["parent_span_id"]), [])
                    if p["end_ns"] <= stored["start_ns"]]
        if siblings:
            best = _best_prompt(stored, siblings)
            changes.append({"p_trace": stored["trace_id"], "p_span": stored["span_id"],
                            "p_component": best["component"],
                            "p_version": best["prompt_version"],
                            "p_flag": best.get("prompt_flag")})
    if changes:
        t = SpanRow.__table__
        conn.execute(update(t)
                     .where(and_(t.c.trace_id == bindparam("p_trace"),
                                 t.c.span_id == bindparam("p_span")))
                     .values(component=bindparam("p_component"),
                             prompt_version=bindparam("p_version"),
                             prompt_flag=bindparam("p_flag")), changes)
    return len(changes)
