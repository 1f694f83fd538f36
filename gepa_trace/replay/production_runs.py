"""The root spans of one agent's production runs, as example loading reads them.

The window's queries read the agent's production-run index (``ix_spans_agent_runs_by_time``,
revision 0007), and ``attributes_of`` the agent's traces by id (``ix_spans_agent_traces``,
revision 0008); they reach the spans table only for the rows whose attributes they need.
Without statistics (gepa-trace never runs ANALYZE) SQLite's planner prefers
``ix_spans_agent_root`` (two equalities) and then reads every root of the agent,
rollouts included, for its run id: three to ten times slower at 1M spans. On SQLite the
index is therefore named (``INDEXED BY``); PostgreSQL picks it from its statistics.

A run's attributes (its inputs and output, the bulk of a root) are read only where they
are needed: ``window`` reads them for the runs with feedback (or all of them), and the
others are read in one go when asked for (``attributes_later``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import text

from gepa_trace.store import Store

_PRODUCTION = "agent = :agent AND parent_span_id IS NULL AND run_id IS NULL"
_HAS_FEEDBACK = "EXISTS (SELECT 1 FROM feedback WHERE feedback.trace_id = spans.trace_id)"
_IN_CHUNK = 500  # ids per IN (...): well under old SQLite builds' 999 parameters


class ProductionRuns:
    """The production runs of ``agent`` whose start lies in [since, until) (epoch
    seconds; None: unbounded)."""

    def __init__(self, store: Store, agent: str, since: float | None = None,
                 until: float | None = None) -> None:
        self.store = store
        self.spans = ("spans INDEXED BY ix_spans_agent_runs_by_time"
                      if store.dialect == "sqlite" else "spans")
        self.params: dict[str, Any] = {"agent": agent}
        bounds = []
        if since is not None:
            bounds.append("start_ns >= :since")
            self.params["since"] = int(since * 1e9)
        if until is not None:
            bounds.append("start_ns < :until")
            self.params["until"] = int(until * 1e9)
        self.bounds = " AND ".join(bounds)

    def _select(self, columns: str, where: str, order: str = "") -> list[tuple[Any, ...]]:
        sql = f"SELECT {columns} FROM {self.spans} WHERE {_PRODUCTION} AND {where}{order}"
        with self.store.read() as conn:
            # plain tuples: the garbage collector stops tracking a tuple of strings and
            # numbers, not a Row (20k live Rows cost a full collection, 50-80 ms here)
            return [tuple(row) for row in conn.execute(text(sql), self.params)]

    def window(self, attributes: str = "with_feedback") -> list[Any]:
        """Rows (trace_id, start_ns, attributes) in the window, newest first (then by
        trace id). ``attributes``: ``all`` reads every run's; ``with_feedback`` only
        those of runs with at least one feedback record (None for the others)."""
        # The attributes of a run with feedback come from a lookup by primary key, so
        # the scan itself stays on the index (PostgreSQL: an index-only scan; SQLite: a
        # covering one) and the others' rows are never read.
        column = "attributes" if attributes == "all" else (
            f"CASE WHEN {_HAS_FEEDBACK} THEN (SELECT a.attributes FROM spans AS a WHERE "
            "a.trace_id = spans.trace_id AND a.span_id = spans.span_id) END AS attributes")
        return self._select(f"trace_id, start_ns, {column}", self.bounds or "1 = 1",
                            " ORDER BY start_ns DESC, trace_id")

    def attributes_later(self) -> Callable[[str], str | None]:
        """A lookup of one run's root attributes JSON (None: not a run in the window)
        that reads those of every run in the window at its first call: the runs left
        out unread are listed all together (``examples``, the UI) or not at all."""
        found: dict[str, str] | None = None

        def lookup(trace_id: str) -> str | None:
            nonlocal found
            if found is None:
                found = dict(self._select("trace_id, attributes", self.bounds or "1 = 1"))
            return found.get(trace_id)

        return lookup

    def outside(self) -> list[str]:
        """Trace ids of the agent's production runs outside the window, newest first."""
        if not self.bounds:
            return []
        return [row[0] for row in self._select("trace_id", f"NOT ({self.bounds})",
                                               " ORDER BY start_ns DESC")]

    def count_outside(self) -> int:
        """How many production runs of the agent lie outside the window (index only)."""
        if not self.bounds:
            return 0
        return int(self._select("COUNT(*)", f"NOT ({self.bounds})")[0][0])

    def attributes_of(self, trace_ids: Sequence[str]) -> dict[str, str]:
        """{trace id: root attributes JSON} of those of ``trace_ids`` that are production
        runs of the agent, wherever they start; one query per 500 ids."""
        found: dict[str, str] = {}
        ids = list(dict.fromkeys(trace_ids))
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start:start + _IN_CHUNK]
            names = [f"t{i}" for i in range(len(chunk))]
            sql = (f"SELECT trace_id, attributes FROM spans WHERE {_PRODUCTION} AND trace_id "
                   f"IN ({', '.join(':' + n for n in names)})")
            with self.store.read() as conn:
                found.update(conn.execute(text(sql), {**self.params,
                                                      **dict(zip(names, chunk))}).all())
        return found


__all__ = ["ProductionRuns"]
