"""Reads at volume: a store of 1M spans (SQLite and PostgreSQL), and how long the listing
queries take through their public functions.

    .venv/bin/python bench/bench_store_scale.py [--spans 1000000] [--repeats 7]
        [--pg URL [--pg-schema NAME] | --no-pg] [--cache DIR] [--no-write]

The store is built once with the write path (``store.spans.prepare_spans`` and
``write_prepared``, 20,000 spans per transaction) and cached: the SQLite file under
``--cache`` (default /tmp/gepa-trace-scale), the PostgreSQL store in its own schema of
the ``--pg`` database (default $GEPA_TRACE_TEST_PG). A cached store opened by newer code
is brought forward by its migrations, as a user's would be.

What it holds: traces of 6 spans (a CHAIN root with input and output, a PROMPT, two LLM
calls with a component, prompt version, model and tokens, a TOOL, a CHAIN) from 5 agents,
spread evenly over the 90 days before the build; 40% of the traces are optimizer rollouts
(``gepa.run.id``, 20 runs); 10% of the production traces have one feedback record.

Timed (median of ``--repeats`` after one untimed call, with min and max):
``traces --limit 50`` = ``queries.list_runs(limit=50)``, with and without an agent, and
with rollouts;
``components`` = ``components.list_components`` + ``spans.flagged_counts`` (what the command
runs); example loading = ``replay.dataset.load_examples`` of one agent over the last 7
days and over its whole history. Target: under 100 ms each on both stores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA_VERSION = 1  # bump when the generated data changes: the cache is rebuilt
AGENTS = [f"agent-{i}" for i in range(5)]
COMPONENTS = ["planner", "answer"]
RUNS = [f"run-{i:02d}" for i in range(20)]
DAYS = 90
SPANS_PER_TRACE = 6
BATCH = 20_000


def _trace(rng: random.Random, number: int, start_ns: int) -> list[dict]:
    """One trace's span dicts (the shape ``store.spans`` takes)."""
    agent = AGENTS[number % len(AGENTS)]
    rollout = rng.random() < 0.4
    trace_id = f"{rng.getrandbits(128):032x}"
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(SPANS_PER_TRACE)]
    base = {"gepa.agent": agent}
    if rollout:
        base["gepa.run.id"] = RUNS[number % len(RUNS)]
    question = f"question {number % 5000}: which plan fits order {number}?"
    resource = {"service.name": agent}

    def span(i: int, parent: int | None, name: str, kind: str, attributes: dict,
             offset: int, duration: int) -> dict:
        return {"trace_id": trace_id, "span_id": ids[i],
                "parent_span_id": None if parent is None else ids[parent], "name": name,
                "kind": "INTERNAL", "start_ns": start_ns + offset,
                "end_ns": start_ns + offset + duration, "status_code": "OK",
                "status_message": None, "resource": resource, "events": [],
                "attributes": {**base, "openinference.span.kind": kind, **attributes}}

    spans = [span(0, None, "agent", "CHAIN", {"input.value": json.dumps({"question": question}),
                                              "output.value": "Plan B, shipped Monday."},
                  0, 9_000_000)]
    for n, component in enumerate(COMPONENTS):
        version = f"{component}-v{(number // 40_000) % 3}"
        spans.append(span(1 + n, 0, f"call {component}", "LLM", {
            "gepa.component": component, "gepa.prompt.version": version,
            "llm.model_name": "gpt-4.1-mini", "llm.token_count.prompt": 120,
            "llm.token_count.completion": 30,
            "llm.input_messages.0.message.content": f"You are the {component}.",
            "llm.output_messages.0.message.content": "Plan B."}, 1_000_000 + n * 3_000_000,
                          2_000_000))
    spans.append(span(3, 0, "lookup_order", "TOOL", {"input.value": str(number),
                                                     "output.value": "in stock"},
                      7_000_000, 500_000))
    spans.append(span(4, 0, "prompt", "PROMPT", {"input.value": question}, 500_000, 100_000))
    spans.append(span(5, 0, "format", "CHAIN", {"input.value": "Plan B"}, 8_000_000, 500_000))
    return spans


def build(url: str, spans: int, seed: int = 0) -> None:
    """Write ``spans`` spans (and feedback on 10% of production traces) into a new store."""
    import sqlalchemy as sa

    from gepa_trace.store import open_store
    from gepa_trace.store.spans import prepare_spans, write_prepared
    from gepa_trace.store.tables import FeedbackRow

    store = open_store(url, create=True)
    rng = random.Random(seed)
    traces = spans // SPANS_PER_TRACE
    end_ns = time.time_ns() - 3600 * 10**9
    step = DAYS * 86400 * 10**9 // traces
    first_ns = end_ns - traces * step
    batch: list[dict] = []
    feedback: list[dict] = []
    started = time.perf_counter()
    for number in range(traces):
        trace = _trace(rng, number, first_ns + number * step)
        batch.extend(trace)
        if "gepa.run.id" not in trace[0]["attributes"] and rng.random() < 0.1:
            feedback.append({"trace_id": trace[0]["trace_id"], "span_id": None,
                             "name": "user", "score": float(rng.random() < 0.6),
                             "comment": "wrong shipping day" if rng.random() < 0.3 else None,
                             "source": "user", "created_at": time.time()})
        if len(batch) >= BATCH or number == traces - 1:
            write_prepared(store, [prepare_spans(batch)])
            batch = []
            if number % (BATCH * 10 // SPANS_PER_TRACE) < BATCH // SPANS_PER_TRACE:
                done = (number + 1) * SPANS_PER_TRACE
                print(f"  {done} spans, {done / (time.perf_counter() - started):.0f}/s",
                      file=sys.stderr)
    with store.write() as conn:
        conn.execute(sa.insert(FeedbackRow.__table__), feedback)
    with store.write() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS bench_scale_built (spans INTEGER)"))
        conn.execute(sa.text("INSERT INTO bench_scale_built VALUES (:n)"), {"n": spans})
    if store.dialect == "postgresql":  # SQLite: no ANALYZE, as in a user's store
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))  # what autovacuum does after a bulk load


def _built(url: str, spans: int) -> bool:
    import sqlalchemy as sa

    from gepa_trace.errors import StoreError
    from gepa_trace.store import forget_store, open_store

    try:
        store = open_store(url)
    except StoreError:
        return False
    try:
        with store.read() as conn:
            return conn.execute(sa.text("SELECT spans FROM bench_scale_built")).scalar() == spans
    except sa.exc.SQLAlchemyError:
        forget_store(url)
        return False


def sqlite_store(cache: Path, spans: int) -> str:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"store-{spans}-v{DATA_VERSION}.db"
    url = f"sqlite:///{path}"
    if not _built(url, spans):
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            leftover.unlink(missing_ok=True)
        print(f"building {path} ({spans} spans)", file=sys.stderr)
        build(url, spans)
    return url


def pg_store(base: str, spans: int, schema: str | None = None) -> str:
    import sqlalchemy as sa

    schema = schema or f"bench_scale_{spans}_v{DATA_VERSION}"
    sep = "&" if "?" in base else "?"
    url = f"{base}{sep}options=-csearch_path%3D{schema}"
    if _built(url, spans):
        return url
    from gepa_trace.store import forget_store

    forget_store(url)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    print(f"building PostgreSQL schema {schema} ({spans} spans)", file=sys.stderr)
    build(url, spans)
    return url


class _SqlClock:
    """Time spent in the database driver's execute (rows fetched later are not in it on
    SQLite; psycopg fetches them within it)."""

    def __init__(self, engine):
        import sqlalchemy as sa

        self.spent = 0.0
        self._started: dict[int, float] = {}
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, _conn, cursor, *_args):
        self._started[id(cursor)] = time.perf_counter()

    def _after(self, _conn, cursor, *_args):
        self.spent += time.perf_counter() - self._started.pop(id(cursor), time.perf_counter())


def _time(fn, repeats: int, clock: _SqlClock) -> dict:
    fn()  # untimed: connections, caches
    runs, sql, cpu = [], [], []
    for _ in range(repeats):
        clock.spent = 0.0
        started, cpu_started = time.perf_counter(), time.process_time()
        result = fn()
        runs.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
        sql.append(clock.spent * 1000)
    return {"median_ms": round(statistics.median(runs), 1), "min_ms": round(min(runs), 1),
            "max_ms": round(max(runs), 1), "sql_ms": round(statistics.median(sql), 1),
            "cpu_ms": round(statistics.median(cpu), 1), "result": result}


def measure(url: str, repeats: int) -> list[dict]:
    from gepa_trace.replay.dataset import ExampleFilter, load_examples
    from gepa_trace.store import open_store
    from gepa_trace.store.components import list_components
    from gepa_trace.store.queries import list_runs
    from gepa_trace.store.spans import flagged_counts

    store = open_store(url)
    agent = AGENTS[0]
    week = time.time() - 7 * 86400

    def examples(since):
        dataset = load_examples(store, agent, filters=ExampleFilter(since=since),
                                min_examples=0)
        return f"{len(dataset.all())} examples of {len(dataset.all()) + len(dataset.left_out)}"

    cases = [
        ("traces --limit 50", lambda: f"{len(list_runs(store, limit=50))} runs"),
        (f"traces --limit 50 --agent {agent}",
         lambda: f"{len(list_runs(store, agent=agent, limit=50))} runs"),
        ("traces --limit 50 --rollouts",
         lambda: f"{len(list_runs(store, include_rollouts=True, limit=50))} runs"),
        ("components", lambda: (f"{len(list_components(store))} components, "
                                f"{sum(flagged_counts(store).values())} flagged")),
        (f"components --agent {agent}",
         lambda: (f"{len(list_components(store, agent=agent))} components, "
                  f"{sum(flagged_counts(store, agent).values())} flagged")),
        (f"load_examples {agent}, last 7 days", lambda: examples(week)),
        (f"load_examples {agent}, all history", lambda: examples(None)),
    ]
    results = []
    clock = _SqlClock(store.engine)
    for name, fn in cases:
        result = {"query": name, **_time(fn, repeats, clock)}
        print(json.dumps(result), file=sys.stderr)
        results.append(result)
    return results


def write_results(tables: dict[str, list[dict]], args, build_note: str) -> None:
    from results import write_section  # bench/results.py, beside this file

    heading = "Store at 1M spans (bench/bench_store_scale.py)"
    lines = [f"## {heading}", "",
             (f"`.venv/bin/python bench/bench_store_scale.py --spans {args.spans} --repeats "
              f"{args.repeats}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{platform.platform()}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}; SQLite (WAL) and PostgreSQL 15 (default "
              "settings) on the same machine, which was shared with other jobs (load average "
              f"{args.load_before:.1f} before the timings). {build_note}"), "",
             ("Each cell: median wall ms of the repeats after one untimed call (min-max); "
              "then the median CPU ms of this process (on SQLite the database's work too; "
              "on PostgreSQL without the server's), which the other jobs inflate less; in "
              "brackets, the median ms spent in the driver's execute (the SQL; on SQLite "
              "without fetching the rows)."), "",
             "| query | " + " | ".join(tables) + " | result |",
             "|---|" + "---|" * len(tables) + "---|"]
    names = [r["query"] for r in next(iter(tables.values()))]
    for i, name in enumerate(names):
        cells = [f"{t[i]['median_ms']} ({t[i]['min_ms']}-{t[i]['max_ms']}), CPU "
                 f"{t[i]['cpu_ms']} [{t[i]['sql_ms']}]" for t in tables.values()]
        lines.append(f"| `{name}` | " + " | ".join(cells)
                     + f" | {next(iter(tables.values()))[i]['result']} |")
    over = [f"{name} on {db}" for db, t in tables.items() for name, r in
            zip(names, t) if r["median_ms"] >= 100]
    lines += ["", "Target: under 100 ms each on both stores: "
              + ("met." if not over else "NOT met for " + "; ".join(over) + ".")]
    write_section(heading, "\n".join(lines + _notes(heading)) + "\n")


def _notes(heading: str) -> list[str]:
    """The section's hand-written subsections (### ...), kept across runs."""
    import re

    from results import RESULTS

    old = RESULTS.read_text() if RESULTS.exists() else ""
    section = re.search(rf"## {re.escape(heading)}\n(.*?)(?=\n## |\Z)", old, re.DOTALL)
    found = re.search(r"\n(### .*)", section.group(1), re.DOTALL) if section else None
    return ["", found.group(1).rstrip("\n")] if found else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pg", default=os.environ.get(
        "GEPA_TRACE_TEST_PG", "postgresql+psycopg://gepa:gepa@127.0.0.1:5432/gepa_test"))
    parser.add_argument("--pg-schema", default=None,
                        help="the cache's schema (default bench_scale_<spans>_v<data version>)")
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/gepa-trace-scale"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    urls = {}
    built = time.perf_counter()
    if not args.no_sqlite:
        urls["SQLite"] = sqlite_store(args.cache, args.spans)
    if not args.no_pg:
        urls["PostgreSQL"] = pg_store(args.pg, args.spans, args.pg_schema)
    build_s = time.perf_counter() - built
    args.load_before = os.getloadavg()[0]
    tables = {name: measure(url, args.repeats) for name, url in urls.items()}
    for name, table in tables.items():
        for r in table:
            print(f"{name:10} {r['query']:45} {r['median_ms']:8.1f} ms "
                  f"({r['min_ms']}-{r['max_ms']}) cpu {r['cpu_ms']} sql {r['sql_ms']} ms  "
                  f"{r['result']}")
    note = (f"Stores built (or found cached and migrated) in {build_s:.0f} s: "
            f"{args.spans} spans, traces of {SPANS_PER_TRACE} spans from {len(AGENTS)} agents "
            f"over {DAYS} days, 40% optimizer rollouts, feedback on 10% of production runs.")
    if not args.no_write:
        write_results(tables, args, note)


if __name__ == "__main__":
    main()
