"""The store at volume (issue 19): the listing queries reach the spans table through an
index, never a scan of every span, on SQLite and PostgreSQL; a batch of spans sent again
is stored once on the fast write path.

The plans are checked on every statement the public functions send (caught on the
engine), so a query that moves or changes is checked too. PostgreSQL plans are made with
``enable_seqscan`` off: it then scans the table only when no index can answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from gepa_trace.replay.dataset import ExampleFilter, load_examples
from gepa_trace.store import FeedbackRow, open_store
from gepa_trace.store.components import list_components
from gepa_trace.store.prune import prune
from gepa_trace.store.queries import list_runs
from gepa_trace.store.spans import flagged_counts, write_spans

DAY_NS = 86400 * 10**9


def _trace(n: int, start_ns: int, *, agent: str, run_id: str | None = None) -> list[dict]:
    """A root with input and output, and an LLM call of a component."""
    trace_id, root = f"{n:032x}", f"{n:015x}0"
    base = {"gepa.agent": agent, **({"gepa.run.id": run_id} if run_id else {})}
    return [
        {"trace_id": trace_id, "span_id": root, "parent_span_id": None, "name": "agent",
         "start_ns": start_ns, "end_ns": start_ns + 10**6,
         "attributes": {**base, "openinference.span.kind": "CHAIN",
                        "input.value": f'{{"question": "q{n}"}}', "output.value": "a"}},
        {"trace_id": trace_id, "span_id": f"{n:015x}1",
         "parent_span_id": root, "name": "call", "start_ns": start_ns + 10,
         "end_ns": start_ns + 10**5,
         "attributes": {**base, "openinference.span.kind": "LLM", "gepa.component": "planner",
                        "gepa.prompt.version": f"v{n % 3}", "llm.model_name": "m"}},
    ]


def _fill(store, traces: int = 120) -> None:
    now = time.time_ns()
    spans = []
    for n in range(1, traces + 1):
        spans += _trace(n, now - (traces - n) * DAY_NS // 100, agent=f"agent-{n % 3}",
                        run_id="run-1" if n % 5 == 0 else None)
    write_spans(store, spans)
    with store.write() as conn:  # feedback on every tenth run
        conn.execute(sa.insert(FeedbackRow.__table__), [
            {"trace_id": f"{n:032x}", "name": "user", "score": 1.0, "source": "user",
             "created_at": time.time()} for n in range(3, traces + 1, 10)])
    if store.dialect == "postgresql":
        # what autovacuum does soon after rows arrive; without statistics PostgreSQL
        # plans a small table as if it held one row (SQLite stores have none: as users')
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(sa.text("ANALYZE spans"))


def _statements(store, call: Callable[[], object]) -> list[tuple[str, object]]:
    """The SQL statements on the spans table that ``call`` sends, with their parameters."""
    sent: list[tuple[str, object]] = []

    def caught(_conn, _cursor, statement, parameters, _context, _many):
        if "spans" in statement and statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", caught)
    try:
        call()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", caught)
    assert sent, "the call sent no query on spans"
    return sent


def _scans_of_spans(store, statements: list[tuple[str, object]]) -> list[str]:
    """The plan lines that read every row of the spans table (or sort all roots)."""
    bad = []
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        if store.dialect == "postgresql":
            cursor.execute("SET enable_seqscan = off")
            for statement, params in statements:
                cursor.execute("EXPLAIN (FORMAT JSON) " + statement, params)
                bad += [f"{node} <- {statement}"
                        for node in _full_reads(cursor.fetchone()[0][0]["Plan"])]
        else:
            for statement, params in statements:
                cursor.execute("EXPLAIN QUERY PLAN " + statement, params)
                for row in cursor.fetchall():
                    detail = row[-1]
                    # a page of a listing that sorts every match first reads them all
                    sorts_all = detail == "USE TEMP B-TREE FOR ORDER BY" and \
                        "LIMIT" in statement.upper()
                    # a scan (not a search) of an index of every span reads them all
                    whole_index = detail.startswith("SCAN spans USING") and not any(
                        f"INDEX {name}" in detail for name in _PARTIAL)
                    if detail == "SCAN spans" or sorts_all or whole_index:
                        bad.append(f"{detail} <- {statement}")
    finally:
        raw.rollback()
        raw.close()
    return bad


_BLOCKING = {"Sort", "Aggregate", "Hash", "Materialize", "Unique", "SetOp"}


def _full_reads(plan: dict, limited: bool = False) -> list[str]:
    """PostgreSQL plan nodes that read all of spans: a Seq Scan, or a scan of an index
    of every span (a partial index holds only some) without a narrowing condition on its
    first column (one on a later column, or IS NOT NULL, still reads the whole index),
    unless a Limit stops it early; and a page (Limit) sorted out of every match."""
    found = []
    if plan.get("Relation Name") == "spans" or plan.get("Index Name") in _FIRST_COLUMN:
        kind, index = plan["Node Type"], plan.get("Index Name")
        condition = plan.get("Index Cond", "")
        narrowed = index is not None and (index in _PARTIAL or (
            _FIRST_COLUMN[index] in condition and "IS NOT NULL" not in condition))
        # under a Limit with nothing between that needs all its input, a scan stops early
        if kind == "Seq Scan" or (index is not None and not narrowed and not limited):
            found.append(f"{kind} {index or ''} {condition}".strip())
    kind = plan["Node Type"]
    if kind == "Sort" and limited and "spans" in json.dumps(plan):
        found.append("Sort of every match for a page")  # as SQLite's TEMP B-TREE above
    limited = (limited or kind == "Limit") and kind not in _BLOCKING
    for child in plan.get("Plans", ()):
        found += _full_reads(child, limited)
    return found


def _indexes() -> tuple[set[str], dict[str, str]]:
    from gepa_trace.store.tables import SpanRow

    indexes = SpanRow.__table__.indexes
    partial = {i.name for i in indexes if i.dialect_options["postgresql"]["where"] is not None}
    first = {i.name: next(iter(i.columns)).name for i in indexes}
    return partial, {**first, "spans_pkey": "trace_id"}


_PARTIAL, _FIRST_COLUMN = _indexes()


LISTINGS = {
    "traces --limit 50": lambda s: list_runs(s, limit=50),
    "traces --limit 50 --agent": lambda s: list_runs(s, agent="agent-1", limit=50),
    "traces --since": lambda s: list_runs(s, since=time.time() - 86400, limit=50),
    "traces --rollouts": lambda s: list_runs(s, include_rollouts=True, limit=50),
    "components": lambda s: (list_components(s), flagged_counts(s)),
    "components --agent": lambda s: (list_components(s, agent="agent-1"),
                                     flagged_counts(s, "agent-1")),
    "examples of an agent": lambda s: load_examples(
        s, "agent-1", filters=ExampleFilter(since=time.time() - 5 * 86400), min_examples=0),
    "examples of an agent, all history": lambda s: load_examples(s, "agent-1",
                                                                 min_examples=0),
    "examples, listed with the runs left out": lambda s: [
        item.run for item in load_examples(s, "agent-1", min_examples=0,
                                           list_outside=True).left_out],
    "prune --dry-run": lambda s: prune(s, cutoff_s=time.time() - 10 * 86400, dry_run=True),
    "prune --agent --dry-run": lambda s: prune(s, cutoff_s=time.time() - 10 * 86400,
                                               agent="agent-2", dry_run=True),
}


@pytest.mark.parametrize("listing", list(LISTINGS))
def test_listings_read_spans_through_an_index_not_a_full_scan(store_url, listing):
    store = open_store(store_url)
    _fill(store, traces=3000)  # big enough that sorting all roots is the dearer plan
    statements = _statements(store, lambda: LISTINGS[listing](store))
    assert _scans_of_spans(store, statements) == []


def test_the_plan_check_sees_a_full_scan(store_url):
    """The check above fails where it should: a column without an index, a sort of all
    roots for a page, and (PostgreSQL) every entry of an index of all spans."""
    store = open_store(store_url)
    _fill(store, traces=10)
    statements = ["SELECT trace_id FROM spans WHERE name = 'agent'",
                  ("SELECT trace_id FROM spans WHERE parent_span_id IS NULL "
                  "ORDER BY name LIMIT 5")]
    if store.dialect == "postgresql":  # SQLite calls this one a SEARCH (agent > NULL)
        statements.append("SELECT DISTINCT agent FROM spans WHERE agent IS NOT NULL")
    for statement in statements:
        assert _scans_of_spans(store, [(statement, {})]), statement


def test_newest_runs_come_first_with_rollouts_left_out(store_url):
    store = open_store(store_url)
    _fill(store, traces=30)
    runs = list_runs(store, limit=5)
    assert [r.trace_id for r in runs] == [f"{n:032x}" for n in (29, 28, 27, 26, 24)]
    assert [r.span_count for r in runs] == [2] * 5


def test_a_batch_sent_again_is_stored_once_with_the_new_spans_of_it(store_url):
    """A client retry (the whole batch again, maybe with more) and a batch that repeats a
    span: each span is stored once, and the spans not stored before are stored."""
    store = open_store(store_url)
    now = time.time_ns()
    first = _trace(1, now, agent="a") + _trace(2, now, agent="a")
    assert write_spans(store, first) == 4
    again = first + _trace(3, now, agent="a")
    write_spans(store, again)
    write_spans(store, _trace(4, now, agent="a") * 2)
    with store.read() as conn:
        stored = conn.execute(sa.text("SELECT trace_id, span_id FROM spans")).all()
    assert len(stored) == len(set(stored)) == 8
    assert {t for t, _s in stored} == {f"{n:032x}" for n in (1, 2, 3, 4)}


def test_a_store_from_before_the_listing_indexes_gets_them_when_opened(store_url):
    from rewind import forget_revisions_from

    from gepa_trace.store import forget_store

    store = open_store(store_url)
    _fill(store, traces=10)
    with store.write() as conn:  # undo revision 0007, as a store written before it
        forget_revisions_from(conn, "0007")
    forget_store(store_url)
    store = open_store(store_url)
    with store.read() as conn:
        indexes = {i["name"]: i["column_names"] for i in sa.inspect(conn).get_indexes("spans")}
    assert indexes["ix_spans_roots_by_time"] == ["start_ns", "trace_id", "span_id", "run_id"]
    assert indexes["ix_spans_agent_runs_by_time"] == ["agent", "start_ns", "trace_id",
                                                      "span_id"]
    assert indexes["ix_spans_llm_calls"] == ["component", "prompt_version", "start_ns",
                                             "span_type"]
    assert [r.trace_id for r in list_runs(store, limit=2)] == [f"{n:032x}" for n in (9, 8)]


def test_prune_finds_every_agent_through_the_agent_index(store_url):
    """`prune` without --agent locks every agent: those of spans and of optimization
    runs, each once, found without reading every span's agent."""
    from gepa_trace.store import OptimizationRunRow
    from gepa_trace.store.prune import recorded_agents

    store = open_store(store_url)
    _fill(store, traces=12)
    with store.write() as conn:
        conn.execute(sa.insert(OptimizationRunRow.__table__).values(
            id="r1", agent="only-optimized", started_at=time.time()))
        conn.execute(sa.insert(OptimizationRunRow.__table__).values(
            id="r2", agent="agent-1", started_at=time.time()))
    statements = _statements(store, lambda: recorded_agents(store))
    assert recorded_agents(store) == ["agent-0", "agent-1", "agent-2", "only-optimized"]
    assert _scans_of_spans(store, statements) == []
