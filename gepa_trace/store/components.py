"""The components of the store: prompts (by name) that LLM calls carried, their versions
and calls, for ``components``, the UI and ``versions``.

Read as ``store.queries`` reads (plain dataclasses whose ``to_dict()`` is what
``--json`` prints; through indexes only: LLM calls by component, revision 0007; an
agent's traces and their LLM calls, revision 0008).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, literal_column, or_, select, text

from gepa_trace.store.engine import Store, open_store
from gepa_trace.store.queries import _SPANS, _VERSIONS, _loads


@dataclass(frozen=True)
class ComponentVersion:
    """One prompt version of a component: its template messages (parsed JSON; the raw
    text if it is not JSON), its origin, how many LLM calls used it, and when it was
    first/last seen (span start times when it has calls, else when it was recorded)."""

    version: str | None
    template: Any
    origin: str | None
    calls: int
    first_seen: float | None
    last_seen: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Component:
    """A prompt of an agent that the optimizer may rewrite, with its versions
    (most recently seen first) and its number of LLM calls over all versions."""

    name: str
    calls: int
    versions: tuple[ComponentVersion, ...]

    @property
    def first_seen(self) -> float | None:
        seen = [v.first_seen for v in self.versions if v.first_seen is not None]
        return min(seen) if seen else None

    @property
    def last_seen(self) -> float | None:
        seen = [v.last_seen for v in self.versions if v.last_seen is not None]
        return max(seen) if seen else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "calls": self.calls, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "versions": [v.to_dict() for v in self.versions]}


def list_components(store: Store | str | None = None, *, agent: str | None = None,
                    include_candidates: bool = False) -> list[Component]:
    """Components (by name), their LLM calls and their prompt versions.

    Calls are LLM spans carrying ``gepa.component``; with ``agent`` only those in that
    agent's traces (found through the root spans, so child spans need no agent
    attribute). Versions are those that have calls, plus those recorded as observed in
    ``prompt_versions`` (for ``agent``: recorded with that agent); ``include_candidates``
    adds the optimizer's versions of these components that production never ran.
    Two queries: one GROUP BY over spans (with ``agent``: ``_agent_calls``), one over
    prompt_versions.
    """
    store = open_store(store)
    s = _SPANS
    # 'llm' as a literal: it is the predicate of the covering index ix_spans_llm_calls,
    # which SQLite uses only for a query that spells the same literal.
    calls_q = (select(s.c.component, s.c.prompt_version, func.count(),
                      func.min(s.c.start_ns), func.max(s.c.start_ns))
               .where(s.c.span_type == literal_column("'llm'"), s.c.component.is_not(None))
               .group_by(s.c.component, s.c.prompt_version))
    v = _VERSIONS
    with store.read() as conn:
        call_rows = conn.execute(calls_q).all() if agent is None else \
            conn.execute(_agent_calls(store.dialect), {"agent": agent}).all()
        names = sorted({r[0] for r in call_rows})
        versions_q = select(v)
        if agent is not None:
            # A version the optimizer made has no agent of its own: match it by component.
            versions_q = versions_q.where(or_(v.c.agent == agent, v.c.component.in_(names)))
        version_rows = conn.execute(versions_q).all()
    calls: dict[tuple[str, str | None], tuple[int, int, int]] = {
        (c, ver): (int(n), first, last) for c, ver, n, first, last in call_rows}
    recorded = {(r.component, r.version): r for r in version_rows}
    keys = set(calls)
    for key, row in recorded.items():
        if row.origin == "observed":
            # Seen in production, yet no call in this agent's runs: list it only if it
            # was recorded for this agent (a component name may be shared by agents).
            if agent is None or row.agent == agent:
                keys.add(key)
        elif include_candidates:
            keys.add(key)
    grouped: dict[str, list[ComponentVersion]] = defaultdict(list)
    for component, version in keys:
        row = recorded.get((component, version))
        n, first_ns, last_ns = calls.get((component, version), (0, None, None))
        if n:
            first, last = first_ns / 1e9, last_ns / 1e9
        else:
            first, last = (row.first_seen, row.last_seen) if row is not None else (None, None)
        template = _loads(row.template, row.template) if row is not None else None
        grouped[component].append(ComponentVersion(
            version=version, template=template, origin=row.origin if row is not None else None,
            calls=n, first_seen=first, last_seen=last))
    components = []
    for name in sorted(grouped):
        versions = sorted(grouped[name], key=lambda cv: (-(cv.last_seen or 0), cv.version or ""))
        components.append(Component(name=name, calls=sum(cv.calls for cv in versions),
                                    versions=tuple(versions)))
    return components


def _agent_calls(dialect: str) -> Any:
    """LLM calls of an agent's traces grouped as ``list_components`` counts them: the
    agent's trace ids (``ix_spans_agent_traces``), each looked up in the LLM calls by
    trace (``ix_spans_llm_calls_by_trace``), both read from the index alone (revision
    0008). Without statistics SQLite would rather take ix_spans_agent_root (two
    equalities) and read every root's row: there the index is named."""
    hint = " INDEXED BY ix_spans_agent_traces" if dialect == "sqlite" else ""
    return text(
        "SELECT c.component, c.prompt_version, COUNT(*), MIN(c.start_ns), MAX(c.start_ns) "
        f"FROM (SELECT DISTINCT trace_id FROM spans{hint} WHERE parent_span_id IS NULL "
        "AND agent = :agent) AS r JOIN spans AS c ON c.trace_id = r.trace_id "
        "WHERE c.span_type = 'llm' AND c.component IS NOT NULL "
        "GROUP BY c.component, c.prompt_version")


__all__ = ["Component", "ComponentVersion", "list_components"]
