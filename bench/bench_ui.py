"""Web UI latency on a large store: the traces list (with each filter) and a trace page,
served by the UI's real application, on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_ui.py [--spans 1000000] [--repeats 15] [--pg URL]
        [--store URL] [--no-write]

Builds a store of ``--spans`` spans (traces of 20 spans: an agent root, 4 rounds of
prompt + LLM call + tool + chain, the LLM spans with their messages; a fifth of the
traces carry feedback, one in ten of those a correction) through ``write_spans``, the
exporter's own write path, then times each page ``--repeats`` times through Starlette's
ASGI stack (``TestClient``: routing, the store queries, Jinja2 rendering) and reports
the median and the worst. Target (issue 20): under 300 ms. ``--store`` reuses a store
built before (no build). The machine may be shared: the load average is printed.
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

AGENT = "bench-agent"
SPANS_PER_TRACE = 20
TARGET_MS = 300.0
WORDS = ["company", "founded", "city", "year", "office", "passage", "question", "answer", "evidence", "search", "country", "river", "museum", "author", "novel"]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def trace_spans(rng: random.Random, n: int, t0_ns: int) -> list[dict]:
    trace_id = f"{rng.getrandbits(128):032x}"
    ms = 1_000_000
    question = f"Who founded {_text(rng, 3)} number {n}?"
    answer = f"{_text(rng, 6)}."
    spans = [{"trace_id": trace_id, "span_id": f"{rng.getrandbits(64):016x}",
              "parent_span_id": None, "name": AGENT, "kind": "INTERNAL", "start_ns": t0_ns,
              "end_ns": t0_ns + 900 * ms, "status_code": "ERROR" if n % 97 == 0 else "OK",
              "status_message": None, "events": [], "resource": {"service.name": "bench"},
              "attributes": {"openinference.span.kind": "AGENT", "gepa.agent": AGENT,
                             "input.value": json.dumps({"question": question}),
                             "output.value": answer}}]
    root = spans[0]["span_id"]
    for step in range(4):
        base = t0_ns + step * 200 * ms
        for k, (kind, name) in enumerate((("CHAIN", "step"), ("PROMPT", "ChatPromptTemplate"),
                                          ("LLM", "ChatModel"), ("TOOL", "search"))):
            attrs: dict = {"openinference.span.kind": kind, "gepa.agent": AGENT}
            if kind == "LLM":
                attrs.update({
                    "gepa.component": f"component_{step}", "gepa.prompt.version": "v0",
                    "llm.model_name": "gepa-sim/task",
                    "llm.input_messages.0.message.role": "system",
                    "llm.input_messages.0.message.content": f"You are step {step}. "
                    + _text(rng, 30),
                    "llm.input_messages.1.message.role": "user",
                    "llm.input_messages.1.message.content": question + " " + _text(rng, 40),
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.content": _text(rng, 12),
                    "llm.token_count.prompt": 120, "llm.token_count.completion": 14})
            elif kind == "TOOL":
                attrs.update({"tool.name": "search", "input.value": _text(rng, 3),
                              "output.value": _text(rng, 60)})
            spans.append({"trace_id": trace_id, "span_id": f"{rng.getrandbits(64):016x}",
                          "parent_span_id": root, "name": name, "kind": "INTERNAL",
                          "start_ns": base + k * 10 * ms, "end_ns": base + k * 10 * ms + 9 * ms,
                          "status_code": "OK", "status_message": None, "events": [],
                          "resource": {"service.name": "bench"}, "attributes": attrs})
    # one more chain span, so a trace has SPANS_PER_TRACE spans
    spans.append({**spans[1], "span_id": f"{rng.getrandbits(64):016x}", "name": "final"})
    return spans


def build(url: str, spans: int, seed: int = 0) -> tuple[list[str], float]:
    """Write the store; returns some trace ids and the seconds it took."""
    from gepa_trace.store import FeedbackRow, open_store
    from gepa_trace.store.spans import write_spans

    rng = random.Random(seed)
    store = open_store(url, create=True)
    traces = spans // SPANS_PER_TRACE
    start = time.perf_counter()
    t0 = int((time.time() - 30 * 86400) * 1e9)
    step = int(30 * 86400 * 1e9 / traces)
    ids, batch, feedback = [], [], []
    for n in range(traces):
        spans_of = trace_spans(rng, n, t0 + n * step)
        batch += spans_of
        trace_id = spans_of[0]["trace_id"]
        if n % 1000 == 0:
            ids.append(trace_id)
        if n % 5 == 0:
            feedback.append({"trace_id": trace_id, "name": "user", "source": "user",
                             "score": float(n % 2), "created_at": time.time(),
                             "expected": "the right answer" if n % 50 == 0 else None,
                             "comment": _text(rng, 5)})
        if len(batch) >= 5000:
            write_spans(store, batch)
            batch = []
            if feedback:
                with store.write() as conn:
                    conn.execute(FeedbackRow.__table__.insert(), feedback)
                feedback = []
            done = (n + 1) * SPANS_PER_TRACE
            if done % 100_000 < SPANS_PER_TRACE * 250:
                print(f"  {done:,} spans ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if batch:
        write_spans(store, batch)
    if feedback:
        with store.write() as conn:
            conn.execute(FeedbackRow.__table__.insert(), feedback)
    if store.dialect == "postgresql":
        # A store that has been written to for a while has planner statistics
        # (autovacuum); a bulk-loaded one has none until autovacuum comes round.
        from sqlalchemy import text

        with store.write() as conn:
            conn.execute(text("ANALYZE"))
    return ids, time.perf_counter() - start


def time_pages(url: str, trace_ids: list[str], repeats: int) -> list[tuple[str, float, float]]:
    from starlette.testclient import TestClient

    from gepa_trace.store.run_search import RunFilter, search_runs
    from gepa_trace.ui import UiSettings, create_app

    client = TestClient(create_app(UiSettings(store=url)), base_url="http://127.0.0.1")
    deep = None
    for _ in range(20):  # page 21 by keyset (or the last page): as cheap as page 1
        deep = search_runs(url, RunFilter(agent=AGENT), after=deep,
                           limit=50).next_cursor or deep
    pages = [
        ("traces list, all agents", "/traces"),
        ("traces list, agent", f"/traces?agent={AGENT}"),
        ("traces list, negative feedback", f"/traces?agent={AGENT}&feedback=negative"),
        ("traces list, has correction", f"/traces?agent={AGENT}&corrected=1"),
        ("traces list, has error", f"/traces?agent={AGENT}&errors=1"),
        ("traces list, text search", f"/traces?agent={AGENT}&q=museum+author"),
        # no run matches: every root of the agent is read (the worst case of a search)
        ("traces list, text search, no match", f"/traces?agent={AGENT}&q=zebra"),
        ("traces list, page 21", f"/traces?agent={AGENT}&after={deep}"),
        ("trace page (20 spans)", None),
        ("components page, all agents", "/components"),
        ("components page, agent", f"/components?agent={AGENT}"),
    ]
    rows = []
    for label, path in pages:
        times = []
        for i in range(repeats):
            target = path or f"/traces/{trace_ids[i % len(trace_ids)]}"
            start = time.perf_counter()
            answer = client.get(target)
            times.append((time.perf_counter() - start) * 1000)
            if answer.status_code != 200:
                raise SystemExit(f"{target}: HTTP {answer.status_code}")
        rows.append((label, statistics.median(times), max(times)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--pg", default=os.environ.get("GEPA_TRACE_TEST_PG"),
                        help="PostgreSQL URL (a fresh schema is used); default "
                             "$GEPA_TRACE_TEST_PG; empty: SQLite only")
    parser.add_argument("--store", default=None, help="time an existing store only")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import tempfile

    from sqlalchemy import create_engine, text

    targets: list[tuple[str, str, bool]] = []
    schema = None
    if args.store:
        targets.append(("given", args.store, False))
    else:
        folder = tempfile.mkdtemp(prefix="bench-ui-")
        targets.append(("SQLite", f"sqlite:///{folder}/ui.db", True))
        if args.pg:
            schema = f"bench_ui_{os.getpid()}"
            engine = create_engine(args.pg)
            with engine.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA {schema}"))
            sep = "&" if "?" in args.pg else "?"
            targets.append(("PostgreSQL", f"{args.pg}{sep}options=-csearch_path%3D{schema}",
                            True))
    lines = []
    for name, url, fresh in targets:
        if fresh:
            print(f"building {args.spans:,} spans in {name} ...", file=sys.stderr)
            ids, seconds = build(url, args.spans)
            print(f"  built in {seconds:.0f} s", file=sys.stderr)
        else:
            from gepa_trace.store.run_search import search_runs

            ids, seconds = [r.trace_id for r in search_runs(url, limit=20).runs], 0.0
        rows = time_pages(url, ids, args.repeats)
        for label, median, worst in rows:
            ok = "yes" if median < TARGET_MS else "NO"
            lines.append(f"| {name} | {label} | {median:.1f} | {worst:.1f} | {ok} |")
            print(lines[-1])
    if not args.store:  # the SQLite store was this run's only
        import shutil

        from gepa_trace.store import forget_store

        forget_store(targets[0][1])
        shutil.rmtree(folder, ignore_errors=True)
    if schema is not None:  # the PostgreSQL store was this run's only
        from gepa_trace.store import forget_store

        forget_store(targets[-1][1])
        with create_engine(args.pg).begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    load = os.getloadavg()[0]
    section = (
        "## Web UI (bench/bench_ui.py)\n\n"
        f"`.venv/bin/python bench/bench_ui.py --spans {args.spans} --repeats {args.repeats}` "
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.platform()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average "
        f"{load:.1f} at the end (the machine was shared with other jobs).\n\n"
        f"Stores of {args.spans:,} spans ({args.spans // SPANS_PER_TRACE:,} traces of "
        f"{SPANS_PER_TRACE} spans, a fifth with feedback), written through `write_spans`. "
        "Each page requested through the UI's ASGI application (routing, store queries, "
        "Jinja2 rendering), milliseconds. The PostgreSQL store is ANALYZEd after the bulk "
        "load, as autovacuum would have done on a store written over time. A text search "
        "reads at most 5,000 runs per agent and page (no index can serve it) and then "
        "offers to continue with older runs; \"no match\" is that whole window read:\n\n"
        "| store | page | median ms | worst ms | under 300 ms |\n|---|---|---|---|---|\n"
        + "\n".join(lines) + "\n")
    if not args.no_write and not args.store:
        from results import write_section

        write_section("Web UI (bench/bench_ui.py)", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
