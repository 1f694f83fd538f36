"""Retention: which recorded data ``gepa-trace prune`` deletes, and deleting it.

What is deleted:

- production traces (every span of a trace whose root has no ``run_id``) whose root
  started before the cutoff, with their feedback records;
- rollout spans (``run_id`` set: made by replays of an optimization run) of *finished*
  runs that finished before the rollout cutoff. The run's rows (candidates,
  evaluations, events) stay; ``EvaluationRow.trace_id`` then names a pruned trace.
  The preflight's tries (``run_id`` "preflight", no run row) go by the same age.

What is never deleted:

- the examples (``EvaluationRow.example_id``, a production trace id) of every run that
  is not finished (running, stopped or failed: it may resume) and of the newest
  finished run of each agent;
- traces marked golden or excluded, and their marks;
- with ``keep_feedback``, every trace that has feedback (kept whole);
- optimization runs, candidates, evaluations, run events, prompt versions and aliases:
  prune never deletes from those tables (so a prompt version that an alias or a
  candidate refers to is always there).

The old production runs are found on the run indexes of revision 0007
(``ix_spans_roots_by_time``, or ``ix_spans_agent_runs_by_time`` with an agent), never by
a scan of every span. Deletes go in chunks of ``chunk`` traces per transaction, so a
large prune never holds the write lock for long. A dry run runs the same selection and counts instead of
deleting, so its counts are what the real run deletes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import text

from gepa_trace.store.engine import Store, sqlite_path
from gepa_trace.store.tables import PREFLIGHT_RUN_ID

CHUNK = 500


@dataclass
class PruneCounts:
    """What a prune deletes (or, dry, would delete). ``payload_bytes``: the text of the
    deleted spans (attributes, events, resource), an estimate of the space reclaimed."""

    traces: int = 0
    spans: int = 0
    feedback: int = 0
    rollout_runs: int = 0
    rollout_spans: int = 0
    payload_bytes: int = 0
    kept_traces: int = 0  # old enough, but something refers to them
    dry_run: bool = False
    vacuum: str | None = None  # "incremental" | "full" | None
    bytes_before: int | None = None  # SQLite only: file size (with its WAL)
    bytes_after: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def protected_traces(store: Store, *, keep_feedback: bool = False) -> set[str]:
    """Production trace ids that something refers to (see the module docstring)."""
    with store.read() as conn:
        runs = conn.execute(text(
            "SELECT id, agent, status, started_at, finished_at FROM optimization_runs")).all()
        kept_runs = {r.id for r in runs if r.status != "finished"}
        newest: dict[str, Any] = {}
        for r in runs:
            if r.status != "finished":
                continue
            when = (r.finished_at or r.started_at, r.started_at)
            if r.agent not in newest or when > newest[r.agent][0]:
                newest[r.agent] = (when, r.id)
        kept_runs |= {run_id for _when, run_id in newest.values()}
        keep: set[str] = set()
        for run_id in kept_runs:
            keep.update(row[0] for row in conn.execute(text(
                "SELECT DISTINCT example_id FROM evaluations WHERE run_id = :r"), {"r": run_id}))
        keep.update(row[0] for row in conn.execute(text("SELECT trace_id FROM example_marks")))
        if keep_feedback:
            keep.update(row[0] for row in conn.execute(text(
                "SELECT DISTINCT trace_id FROM feedback")))
    return keep


def recorded_agents(store: Store) -> list[str]:
    """Every agent of the store: of its spans and of its optimization runs, sorted.

    The spans' agents are found by skipping through ``ix_spans_agent_root`` from one
    agent to the next (one index lookup per agent), not by reading every span's agent
    as ``SELECT DISTINCT agent FROM spans`` does.
    """
    with store.read() as conn:
        return sorted(row[0] for row in conn.execute(text(
            "WITH RECURSIVE a(agent) AS ("
            "SELECT MIN(agent) FROM spans WHERE agent IS NOT NULL "
            "UNION ALL SELECT (SELECT MIN(agent) FROM spans WHERE agent > a.agent) "
            "FROM a WHERE a.agent IS NOT NULL) "
            "SELECT agent FROM a WHERE agent IS NOT NULL "
            "UNION SELECT DISTINCT agent FROM optimization_runs")))


def _ids(store: Store, sql: str, params: dict[str, Any], agent: str | None,
         order: str) -> list[str]:
    """The first column of ``sql`` (a WHERE clause to extend), of ``agent``'s rows only
    when given, ordered by ``order``."""
    if agent is not None:
        sql += " AND agent = :agent"
        params = {**params, "agent": agent}
    with store.read() as conn:
        return [row[0] for row in conn.execute(text(f"{sql} ORDER BY {order}"), params)]


def _old_production_traces(store: Store, cutoff_ns: int, agent: str | None) -> list[str]:
    # Sorted and de-duplicated here, not in SQL: ORDER BY trace_id let SQLite walk the
    # primary key over every span instead of the production-run index.
    return sorted(set(_ids(store, "SELECT trace_id FROM spans WHERE parent_span_id IS NULL "
                           "AND run_id IS NULL AND start_ns < :cutoff",
                           {"cutoff": cutoff_ns}, agent, "start_ns")))


def _finished_runs_before(store: Store, cutoff_s: float, agent: str | None) -> list[str]:
    return _ids(store, "SELECT id FROM optimization_runs WHERE status = 'finished' "
                "AND COALESCE(finished_at, started_at) < :cutoff", {"cutoff": cutoff_s},
                agent, "id")


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _in(column: str, ids: Iterable[str]) -> tuple[str, dict[str, str]]:
    params = {f"p{i}": value for i, value in enumerate(ids)}
    return f"{column} IN ({', '.join(':' + k for k in params)})", params


_PAYLOAD = "COALESCE(SUM(LENGTH(attributes) + LENGTH(events) + LENGTH(resource)), 0)"


def _span_stats(conn: Any, where: str, params: dict[str, Any]) -> tuple[int, int]:
    row = conn.execute(text(f"SELECT COUNT(*), {_PAYLOAD} FROM spans WHERE {where}"),
                       params).one()
    return int(row[0]), int(row[1])


def prune(store: Store, *, cutoff_s: float, rollout_cutoff_s: float | None = None,
          agent: str | None = None, keep_feedback: bool = False, dry_run: bool = False,
          vacuum: bool = True, chunk: int = CHUNK,
          progress: Callable[[str], None] | None = None) -> PruneCounts:
    """Delete (or with ``dry_run`` count) what is older than the cutoffs (epoch seconds)
    and nothing that something refers to. Returns the counts."""
    say = progress or (lambda _m: None)
    rollout_cutoff_s = cutoff_s if rollout_cutoff_s is None else rollout_cutoff_s
    counts = PruneCounts(dry_run=dry_run, bytes_before=_file_bytes(store))
    keep = protected_traces(store, keep_feedback=keep_feedback)
    old = _old_production_traces(store, int(cutoff_s * 1e9), agent)
    doomed = [t for t in old if t not in keep]
    counts.kept_traces = len(old) - len(doomed)
    say(f"prune: {len(doomed)} production traces to delete, {counts.kept_traces} kept "
        "(examples of runs, marked, or with feedback)")
    for done, ids in enumerate(_chunks(doomed, chunk), start=1):
        where, params = _in("trace_id", ids)
        with (store.read() if dry_run else store.write()) as conn:
            spans, payload = _span_stats(conn, where, params)
            feedback = int(conn.execute(text(f"SELECT COUNT(*) FROM feedback WHERE {where}"),
                                        params).scalar_one())
            if not dry_run:
                conn.execute(text(f"DELETE FROM spans WHERE {where}"), params)
                conn.execute(text(f"DELETE FROM feedback WHERE {where}"), params)
        counts.traces += len(ids)
        counts.spans += spans
        counts.feedback += feedback
        counts.payload_bytes += payload
        if done % 20 == 0:
            say(f"prune: {counts.traces}/{len(doomed)} traces")
    for run_id in _finished_runs_before(store, rollout_cutoff_s, agent):
        with store.read() as conn:
            traces = [row[0] for row in conn.execute(text(
                "SELECT DISTINCT trace_id FROM spans WHERE run_id = :r"), {"r": run_id})]
        if traces:
            counts.rollout_runs += 1
        _drop_rollouts(store, run_id, traces, counts, dry_run=dry_run, chunk=chunk)
    _drop_rollouts(store, PREFLIGHT_RUN_ID,
                   _preflight_traces(store, int(rollout_cutoff_s * 1e9), agent), counts,
                   dry_run=dry_run, chunk=chunk)
    if counts.rollout_runs:
        say(f"prune: rollout spans of {counts.rollout_runs} finished runs: "
            f"{counts.rollout_spans}")
    if not dry_run and vacuum and store.dialect == "sqlite" and (
            counts.spans or counts.rollout_spans or counts.feedback):
        say("prune: reclaiming space (SQLite VACUUM)")
        counts.vacuum = reclaim_sqlite(store)
    counts.bytes_after = _file_bytes(store)
    return counts


def _preflight_traces(store: Store, cutoff_ns: int, agent: str | None) -> list[str]:
    """The preflight's tries (run_id "preflight", no run row) that started before then."""
    sql = ("SELECT DISTINCT trace_id FROM spans WHERE run_id = :r "
           "AND parent_span_id IS NULL AND start_ns < :cutoff")
    params: dict[str, Any] = {"r": PREFLIGHT_RUN_ID, "cutoff": cutoff_ns}
    if agent is not None:
        sql += " AND agent = :agent"
        params["agent"] = agent
    with store.read() as conn:
        return [row[0] for row in conn.execute(text(sql), params)]


def _drop_rollouts(store: Store, run_id: str, traces: list[str], counts: PruneCounts, *,
                   dry_run: bool, chunk: int) -> None:
    """Delete (or count) the spans of ``run_id`` in these traces, ``chunk`` at a time."""
    for ids in _chunks(sorted(traces), chunk):
        where, params = _in("trace_id", ids)
        where = f"run_id = :run AND {where}"
        params["run"] = run_id
        with (store.read() if dry_run else store.write()) as conn:
            spans, payload = _span_stats(conn, where, params)
            if not dry_run:
                conn.execute(text(f"DELETE FROM spans WHERE {where}"), params)
        counts.rollout_spans += spans
        counts.payload_bytes += payload


def reclaim_sqlite(store: Store) -> str:
    """Give freed pages back to the file system: ``PRAGMA incremental_vacuum`` when the
    database is in auto_vacuum=INCREMENTAL mode, else ``VACUUM`` (which rewrites the
    file: it needs free disk space about the size of the database and holds the write
    lock while it runs). Then the WAL is checkpointed and truncated."""
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            mode = cur.execute("PRAGMA auto_vacuum").fetchone()[0]
            if int(mode) == 2:
                # executescript steps the pragma to the end; execute() would free one page
                raw.driver_connection.executescript("PRAGMA incremental_vacuum;")
                done = "incremental"
            else:
                cur.execute("VACUUM")
                done = "full"
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            cur.close()
    finally:
        raw.close()
    return done


def _file_bytes(store: Store) -> int | None:
    if store.dialect != "sqlite":
        return None
    path = sqlite_path(str(store.url))
    if path is None or not path.exists():
        return None
    total = path.stat().st_size
    wal = f"{path}-wal"
    if os.path.exists(wal):
        total += os.path.getsize(wal)
    return total


__all__ = ["CHUNK", "PruneCounts", "protected_traces", "prune", "reclaim_sqlite",
           "recorded_agents"]
