"""The root spans of one agent's production runs, as example loading reads them.

Three reads, each from an index: ``ids`` lists the runs in the window
(``ix_spans_agent_runs_by_time``, revision 0007, from the index alone); ``feedback``
reads the runs that have feedback, each with its records and its attributes (its inputs
and output, the bulk of a root); ``attributes_of`` reads runs by id
(``ix_spans_agent_traces``, revision 0008). The other runs' attributes are read in one go
only when asked for (``attributes_later``).

``feedback`` is one join of the feedback table with the agent's roots. Over an agent's
whole history on SQLite it walks the feedback table and looks each record's run up in
the agent's index: feedback is a fraction of the runs (at 1M spans, 10k records of all
agents against 20k runs of one: 14 ms, against 35 ms run by run). Within --since/--until
it keeps only records whose trace is in the window's runs (``IN``), which SQLite walks
run by run, so a nightly window costs what the window holds, not what the whole history
holds. Without statistics (gepa-trace never runs ANALYZE) SQLite's planner picks a poor
order by itself (one plan scanned the agent's roots once per feedback record: 30 s), so
on SQLite the order is forced (``CROSS JOIN``) and the indexes named (``INDEXED BY``).
PostgreSQL is given the ``IN`` in every case: with it, it hashes the window's trace ids
from the index alone and joins the feedback table to them (22 ms at 1M spans); without
it, it hashed every root's row of the agent from the table (100-230 ms).

Rows are fetched from the driver's cursor, as its plain tuples: SQLAlchemy's Row objects
cost as much as the query (20k rows: 25 ms against 14 ms on SQLite). The statements
still go through the engine (its events see them) in the driver's parameter style.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

from gepa_trace.store import Store
from gepa_trace.store.queries import Feedback

_PRODUCTION = "{s}.agent = {agent} AND {s}.parent_span_id IS NULL AND {s}.run_id IS NULL"
_IN_CHUNK = 500  # ids per IN (...): well under old SQLite builds' 999 parameters
#: The feedback columns in the order of ``Feedback``'s fields: a row zipped with them is
#: ``Feedback.to_dict()`` of the record.
FEEDBACK_COLUMNS = tuple(f.name for f in dataclasses.fields(Feedback))


class ProductionRuns:
    """The production runs of ``agent`` whose start lies in [since, until) (epoch
    seconds; None: unbounded)."""

    def __init__(self, store: Store, agent: str, since: float | None = None,
                 until: float | None = None) -> None:
        self.store = store
        self._conn: Any = None  # the connection of ``reading``
        self.sqlite = store.dialect == "sqlite"
        self.params: dict[str, Any] = {"agent": agent}
        bounds = []
        if since is not None:
            bounds.append(f"s.start_ns >= {self._param('since')}")
            self.params["since"] = int(since * 1e9)
        if until is not None:
            bounds.append(f"s.start_ns < {self._param('until')}")
            self.params["until"] = int(until * 1e9)
        self.bounds = " AND ".join(bounds)

    def _param(self, name: str) -> str:
        """A named parameter in the driver's style (sqlite3 ``:name``, psycopg
        ``%(name)s``)."""
        return f":{name}" if self.sqlite else f"%({name})s"

    def _production(self, alias: str) -> str:
        return _PRODUCTION.format(s=alias, agent=self._param("agent"))

    def _spans(self, index: str, alias: str = "s") -> str:
        return f"spans AS {alias} INDEXED BY {index}" if self.sqlite else f"spans AS {alias}"

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One connection for the reads made inside: on PostgreSQL each connection
        handed back to the pool costs a round trip (its rollback)."""
        with self.store.read() as conn:
            self._conn = conn
            try:
                yield
            finally:
                self._conn = None

    def _fetch(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        if self._conn is None:
            with self.reading():
                return self._fetch(sql, params)
        result = self._conn.exec_driver_sql(sql, self.params if params is None else params)
        try:
            return result.cursor.fetchall()  # the driver's tuples, not Rows
        finally:
            result.close()

    def _window(self, columns: str, where: str) -> list[tuple[Any, ...]]:
        """Rows of ``columns`` (start_ns second) of the runs matching ``where``, newest
        first, then by trace id."""
        rows = self._fetch(f"SELECT {columns} FROM "
                           f"{self._spans('ix_spans_agent_runs_by_time')} WHERE "
                           f"{self._production('s')} AND {where} "
                           "ORDER BY s.start_ns, s.trace_id")
        # Read in the index's own order (no sort in the database); a stable sort newest
        # first keeps equal starts in trace id order.
        rows.sort(key=itemgetter(1), reverse=True)
        return rows

    def ids(self) -> list[str]:
        """Trace ids of the runs in the window, newest first (then by trace id)."""
        return [row[0] for row in self._window("s.trace_id, s.start_ns", self.bounds or "1 = 1")]

    def with_attributes(self) -> list[tuple[str, str]]:
        """(trace id, root attributes JSON) of every run in the window, in ``ids`` order."""
        return [(row[0], row[2]) for row in
                self._window("s.trace_id, s.start_ns, s.attributes", self.bounds or "1 = 1")]

    def feedback(self) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        """{trace id: (root attributes JSON, feedback records)} of the runs in the window
        with at least one feedback record; each record as ``Feedback.to_dict()`` gives
        it, a run's records oldest first (then by id)."""
        columns = ", ".join(f"f.{name}" for name in FEEDBACK_COLUMNS)
        sql = (f"SELECT {columns}, a.attributes FROM feedback AS f CROSS JOIN "
               f"{self._spans('ix_spans_agent_traces', 'a')} WHERE a.trace_id = f.trace_id "
               f"AND {self._production('a')}")
        if self.bounds or not self.sqlite:
            sql += (f" AND f.trace_id IN (SELECT s.trace_id FROM "
                    f"{self._spans('ix_spans_agent_runs_by_time')} WHERE "
                    f"{self._production('s')}" + (f" AND {self.bounds})" if self.bounds else ")"))
        found: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        width = len(FEEDBACK_COLUMNS)
        for row in self._fetch(sql + " ORDER BY f.created_at, f.id"):
            record = dict(zip(FEEDBACK_COLUMNS, row))
            run = found.get(record["trace_id"])
            if run is None:
                found[record["trace_id"]] = (row[width], [record])
            else:
                run[1].append(record)
        return found

    def attributes_later(self) -> Callable[[str], str | None]:
        """A lookup of one run's root attributes JSON (None: not a run in the window)
        that reads those of every run in the window at its first call: the runs left
        out unread are listed all together (``examples``, the UI) or not at all."""
        found: dict[str, str] | None = None

        def lookup(trace_id: str) -> str | None:
            nonlocal found
            if found is None:
                found = dict(self._fetch(
                    f"SELECT s.trace_id, s.attributes FROM "
                    f"{self._spans('ix_spans_agent_runs_by_time')} WHERE "
                    f"{self._production('s')} AND {self.bounds or '1 = 1'}"))
            return found.get(trace_id)

        return lookup

    def outside(self) -> list[str]:
        """Trace ids of the agent's production runs outside the window, newest first."""
        if not self.bounds:
            return []
        return [row[0] for row in self._window("s.trace_id, s.start_ns",
                                               f"NOT ({self.bounds})")]

    def count_outside(self) -> int:
        """How many production runs of the agent lie outside the window (index only)."""
        if not self.bounds:
            return 0
        return int(self._fetch(f"SELECT COUNT(*) FROM "
                               f"{self._spans('ix_spans_agent_runs_by_time')} WHERE "
                               f"{self._production('s')} AND NOT ({self.bounds})")[0][0])

    def attributes_of(self, trace_ids: Sequence[str]) -> dict[str, str]:
        """{trace id: root attributes JSON} of those of ``trace_ids`` that are production
        runs of the agent, wherever they start; one query per 500 ids."""
        found: dict[str, str] = {}
        ids = list(dict.fromkeys(trace_ids))
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start:start + _IN_CHUNK]
            names = [f"t{i}" for i in range(len(chunk))]
            found.update(self._fetch(
                f"SELECT s.trace_id, s.attributes FROM spans AS s WHERE "
                f"{self._production('s')} AND s.trace_id IN "
                f"({', '.join(self._param(n) for n in names)})",
                {**self.params, **dict(zip(names, chunk))}))
        return found


__all__ = ["FEEDBACK_COLUMNS", "ProductionRuns"]
