"""The collector against the raw baseline, and two collectors against one (issue 19).

Run through ``bench_collector.py --versus-raw`` / ``--two-collectors`` (see there).

Versus raw, on SQLite and on PostgreSQL, ``--repeats`` times, interleaved: the collector
(HTTP, exporters in another process, a fresh store; on PostgreSQL the `gepa-trace
collect` process with its default workers, then with ``--workers 1``; on SQLite
``bench_collector.run``), then the same rows (decoded and prepared before the clock
starts) written into another fresh store in as many transactions as the collector used: ``COPY spans FROM STDIN`` on
PostgreSQL, ``sqlite3`` ``executemany(INSERT ...)`` on SQLite (same pragmas as the
collector). The ratio is collector spans/s over raw spans/s of the same repeat.

Two collectors: two ``gepa-trace collect --workers 1`` processes on one PostgreSQL store, each fed by
its own sender process, against one process fed by the same two senders; the combined
rate is all spans over the slower sender's time.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import bench_collector as bc

HEADING = "Collector on PostgreSQL (bench/bench_collector.py --store)"
TITLES = {"versus": "### Collector vs raw inserts",
          "two": "### Two collectors on one PostgreSQL"}


@contextmanager
def pg_schema(base: str):
    """A store URL in a fresh PostgreSQL schema, dropped afterwards."""
    import sqlalchemy as sa

    from gepa_trace.store import forget_store

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    url = f"{base}{sep}options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        forget_store(url)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _rows(spans: int, batch: int, seed: int) -> list[tuple]:
    """The spans-table rows the collector would write for these requests."""
    from gepa_trace.collectors.otlp_decode import Decoded, decode_protobuf, prepared_batches

    bodies, _ids = bc.make_requests(spans, batch, seed=seed)
    rows = []
    for body in bodies:
        for prepared in prepared_batches(decode_protobuf(body), Decoded()):
            rows.extend(prepared.rows)
    return rows


def _columns() -> tuple[str, ...]:
    from gepa_trace.store.spans import _SPAN_COLUMNS

    return _SPAN_COLUMNS


def raw_pg(url: str, rows: list[tuple], per_transaction: int) -> float:
    """Seconds to COPY ``rows`` into the spans table of ``url``, committing every
    ``per_transaction`` rows."""
    import psycopg
    from sqlalchemy.engine import make_url

    from gepa_trace.store import open_store

    open_store(url, create=True)  # the same schema and indexes as the collector's store
    parsed = make_url(url)
    options = parsed.query.get("options")
    with psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username,
                         password=parsed.password, dbname=parsed.database,
                         options=options) as conn:
        started = time.perf_counter()
        columns = ", ".join(_columns())
        for start in range(0, len(rows), per_transaction):
            with conn.transaction(), conn.cursor() as cur, \
                    cur.copy(f"COPY spans ({columns}) FROM STDIN") as copy:
                for row in rows[start:start + per_transaction]:
                    copy.write_row(row)
        return time.perf_counter() - started


def raw_sqlite(path: Path, rows: list[tuple], per_transaction: int) -> float:
    """Seconds to executemany ``rows`` into the spans table of the SQLite file, with the
    collector's pragmas, committing every ``per_transaction`` rows."""
    from gepa_trace.store import forget_store, open_store

    url = f"sqlite:///{path}"
    open_store(url, create=True)
    forget_store(url)
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536",
                   "wal_autocheckpoint=20000"):
        conn.execute(f"PRAGMA {pragma}")
    columns = _columns()
    sql = (f"INSERT INTO spans ({', '.join(columns)}) "
           f"VALUES ({', '.join('?' * len(columns))})")
    started = time.perf_counter()
    for start in range(0, len(rows), per_transaction):
        conn.execute("BEGIN")
        conn.executemany(sql, rows[start:start + per_transaction])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def versus_raw(args) -> list[dict]:
    """Each repeat: PostgreSQL with `gepa-trace collect`'s default workers, then with
    ``--workers 1``, then SQLite (one process, in this one); each against raw inserts
    of the same rows in as many transactions, right after it."""
    from gepa_trace.collectors.workers import default_workers

    rows = _rows(args.spans, args.batch, seed=1)  # the runs below send seed 1 too
    results = []
    cases = [("PostgreSQL", default_workers("postgresql")), ("PostgreSQL", 1), ("SQLite", 1)]
    for repeat in range(args.repeats):
        for database, workers in cases:
            with tempfile.TemporaryDirectory() as tmp:
                if database == "PostgreSQL":
                    with pg_schema(args.pg) as url:
                        got = process_run(url, args.spans, args.exporters, args.batch,
                                          workers)
                    per_tx = max(1, round(args.spans / got["transactions"]))
                    with pg_schema(args.pg) as url:
                        raw_s = raw_pg(url, rows, per_tx)
                else:
                    got = bc.run("http", f"sqlite:///{tmp}/collector.db", args.spans,
                                 args.exporters, args.batch, 1)
                    per_tx = max(1, round(args.spans / got["transactions"]))
                    raw_s = raw_sqlite(Path(tmp) / "raw.db", rows, per_tx)
            raw_rate = len(rows) / raw_s
            result = {"database": database, "workers": workers, "repeat": repeat + 1,
                      "collector_spans_per_s": got["spans_per_s"],
                      "raw_spans_per_s": round(raw_rate), "per_transaction": per_tx,
                      "ratio": round(got["spans_per_s"] / raw_rate, 2),
                      "collector_cpu_us_per_span": got["collector_cpu_us_per_span"],
                      "writer_busy": got.get("writer_busy"),
                      "exactly_once": got["exactly_once"]}
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def process_run(url: str, spans: int, exporters: int, batch: int, workers: int) -> dict:
    """`gepa-trace collect --workers N` on ``url``, fed by one sender process (seed 1):
    its rate, the CPU of all its workers, its transactions (from their last lines)."""
    import sqlalchemy as sa

    from gepa_trace.store import open_store

    store = open_store(url, create=True)
    proc, port = _start_collector(url, workers)
    pids = _worker_pids(port, workers)
    senders = bc.start_senders("http", [port], spans, exporters, batch, [1])
    cpu = [_cpu_s(pid) for pid in pids]
    (seconds,) = bc.go(senders)
    used = sum(_cpu_s(pid) - c for pid, c in zip(pids, cpu))
    proc.terminate()
    _out, err = proc.communicate(timeout=120)
    from gepa_trace.collectors.workers import STOPPED  # each worker's last line

    transactions = sum(int(found[1]) for found in STOPPED.findall(err))
    with store.read() as conn:
        got = [tuple(r) for r in conn.execute(sa.text("SELECT trace_id, span_id FROM spans"))]
    _bodies, ids = bc.make_requests(spans, batch, seed=1)
    return {"spans_per_s": round(spans / seconds), "transactions": transactions,
            "collector_cpu_us_per_span": round(used / spans * 1e6, 1),
            "exactly_once": len(got) == len(set(got)) == len(ids) and set(got) == ids}


def _worker_pids(port: int, workers: int) -> list[int]:
    """The pids of the workers behind ``port`` (each /healthz names its own)."""
    import urllib.request

    pids: set[int] = set()
    for _ in range(1000):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            pids.add(json.loads(r.read())["pid"])
        if len(pids) == workers:
            return sorted(pids)
    raise RuntimeError(f"saw {len(pids)} of {workers} workers")


# -- two collector processes ------------------------------------------------------------

_LISTENING = re.compile(r"listening http=[^:]+:(\d+)")


def _start_collector(url: str, workers: int = 1) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", "from gepa_trace.cli import main; main()",
                             "collect", "--store", url, "--http-port", "0",
                             "--grpc-port", "-1", "--workers", str(workers)],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        found = _LISTENING.search(line)
        if found:
            return proc, int(found.group(1))
    raise RuntimeError(f"collector did not start (exit {proc.wait()})")


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int]) -> float:
    """The share of all cores' time spent busy since ``before`` (every process's)."""
    busy, total = machine_busy()
    return round((busy - before[0]) / max(1, total - before[1]), 2)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _feed(ports: list[int], spans: int, exporters: int, batch: int) -> float:
    """Two sender processes (seeds 1 and 2, half the spans each) to ``ports`` (one port
    each, or the same one twice); returns the slower one's seconds."""
    senders = bc.start_senders("http", ports, spans // 2, exporters, batch,
                               [n + 1 for n in range(len(ports))])
    seconds = bc.go(senders)
    return max(seconds)


def collectors(url: str, count: int, args) -> dict:
    import sqlalchemy as sa

    from gepa_trace.store import open_store

    store = open_store(url, create=True)
    procs = [_start_collector(url) for _ in range(count)]
    ports = [port for _proc, port in procs] if count == 2 else [procs[0][1]] * 2
    cpu = [_cpu_s(p.pid) for p, _port in procs]
    machine = machine_busy()
    seconds = _feed(ports, args.spans, max(1, args.exporters // 2), args.batch)
    used = sum(_cpu_s(p.pid) - c for (p, _port), c in zip(procs, cpu))
    busy = busy_share(machine)
    for proc, _port in procs:
        proc.terminate()
        proc.communicate(timeout=60)
    with store.read() as conn:
        stored, distinct = conn.execute(sa.text(
            "SELECT COUNT(*), COUNT(DISTINCT (trace_id, span_id)) FROM spans")).one()
    spans = args.spans // 2 * 2
    return {"collectors": count, "spans": spans, "seconds": round(seconds, 2),
            "spans_per_s": round(spans / seconds),
            "collector_cpu_us_per_span": round(used / spans * 1e6, 1),
            "machine_busy": busy, "stored_exactly_once": stored == distinct == spans}


def two_collectors(args) -> list[dict]:
    results = []
    for repeat in range(args.repeats):
        for count in (1, 2):
            with pg_schema(args.pg) as url:
                result = {"repeat": repeat + 1, **collectors(url, count, args)}
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


# -- report -----------------------------------------------------------------------------

def _spread(values: list[float]) -> str:
    return (f"{statistics.median(values):g} ({min(values):g}-{max(values):g})"
            if len(values) > 1 else f"{values[0]:g}")


def _versus_lines(results: list[dict], args) -> list[str]:
    lines = [(f"`.venv/bin/python bench/bench_collector.py --versus-raw --spans {args.spans} "
             f"--exporters {args.exporters} --batch {args.batch} --repeats {args.repeats}`: "
             "collector over HTTP (exporters in a separate process) vs the same rows written "
             "raw in as many transactions (PostgreSQL: `COPY spans FROM STDIN`, one "
             "connection; SQLite: `executemany(INSERT)`), each repeat on fresh stores with "
             "every index. On PostgreSQL the collector is the `gepa-trace collect` process "
             "(with its workers: CPU counts them all; writer busy is not collected across "
             "processes), on SQLite the same collector in the bench's process. Median "
             "(min-max) over the repeats."), "",
             ("| store | collector spans/s | raw spans/s | ratio | target | collector CPU "
             "µs/span | writer busy | rows per transaction | stored exactly once |"),
             "|---|---|---|---|---|---|---|---|---|"]
    cases = dict.fromkeys((r["database"], r["workers"]) for r in results)
    for database, workers in cases:
        rs = [r for r in results if (r["database"], r["workers"]) == (database, workers)]
        target = 0.5 if database == "SQLite" else 0.6
        label = database if database == "SQLite" else (
            f"{database}, `--workers {workers}`"
            + (" (the default here)" if workers > 1 else ""))
        ratio = statistics.median(r["ratio"] for r in rs)
        busy = [round(r["writer_busy"] * 100) for r in rs if r["writer_busy"] is not None]
        lines.append(
            f"| {label} | {_spread([r['collector_spans_per_s'] for r in rs])} | "
            f"{_spread([r['raw_spans_per_s'] for r in rs])} | "
            f"{_spread([r['ratio'] for r in rs])} | >= {target} "
            f"({'met' if ratio >= target else 'NOT met'}) | "
            f"{_spread([r['collector_cpu_us_per_span'] for r in rs])} | "
            f"{_spread(busy) + '%' if busy else '-'} | "
            f"{_spread([r['per_transaction'] for r in rs])} | "
            f"{'yes' if all(r['exactly_once'] for r in rs) else 'NO'} |")
    return lines


def _two_lines(results: list[dict], args) -> list[str]:
    lines = [(f"`.venv/bin/python bench/bench_collector.py --two-collectors --spans {args.spans} "
             f"--exporters {args.exporters} --batch {args.batch} --repeats {args.repeats}`: "
             "`gepa-trace collect --workers 1` processes on one PostgreSQL store, fed by two sender "
             f"processes of {max(1, args.exporters // 2)} exporters and half the spans each "
             "(both to the one collector, or one to each). Median (min-max)."), "",
             ("| collectors | spans | spans/s | collectors' CPU µs/span | machine busy (all "
              "cores, every process) | stored exactly once |"),
             "|---|---|---|---|---|---|"]
    for count in (1, 2):
        rs = [r for r in results if r["collectors"] == count]
        lines.append(f"| {count} | {rs[0]['spans']} | {_spread([r['spans_per_s'] for r in rs])}"
                     f" | {_spread([r['collector_cpu_us_per_span'] for r in rs])} | "
                     f"{_spread([round(r['machine_busy'] * 100) for r in rs])}% | "
                     f"{'yes' if all(r['stored_exactly_once'] for r in rs) else 'NO'} |")
    # Each repeat runs one collector, then two, back to back: compare within a repeat,
    # where the other jobs on the machine weighed about the same.
    paired = [round(two["spans_per_s"] / one["spans_per_s"], 2)
              for one, two in zip(results[::2], results[1::2])]
    ratio = statistics.median(paired)
    busy = statistics.median(r["machine_busy"] for r in results)
    lines += ["", (f"Two collectors / one, per repeat: {', '.join(f'{p:g}x' for p in paired)}; "
                   f"median {ratio:g}x (target >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'})."
                   + (" All cores were busy for the whole run (collectors, senders, PostgreSQL "
                      "and other jobs): CPU-bound. One collector's Python work runs on about "
                      "one core (its GIL); a second process gets the other core only as far "
                      "as PostgreSQL, the senders and the other jobs leave it, so more needs "
                      "cores (or machines) of its own." if busy >= 0.95 else ""))]
    return lines


def main_versus(args) -> None:
    load = os.getloadavg()[0]
    parts = {}
    if args.versus_raw:
        parts["versus"] = _versus_lines(versus_raw(args), args)
    if args.two_collectors:
        parts["two"] = _two_lines(two_collectors(args), args)
    if any(not line.endswith("| yes |") for lines in parts.values() for line in lines
           if line.startswith("| ") and ("yes |" in line or "NO |" in line)):
        sys.exit("FAILED: some spans were lost or duplicated")
    if not args.no_write:
        write_subsections({TITLES[key]: lines for key, lines in parts.items()}, load)


def write_subsections(parts: dict[str, list[str]], load: float) -> None:
    """Replace these ``### title`` subsections of the PostgreSQL collector section; the
    others stay as they were (another mode's last results, notes written by hand)."""
    from results import RESULTS, write_section

    old = RESULTS.read_text() if RESULTS.exists() else ""
    section = re.search(rf"## {re.escape(HEADING)}\n(.*?)(?=\n## |\Z)", old, re.DOTALL)
    subsections = dict(re.findall(r"(### [^\n]*)\n(.*?)(?=\n### |\Z)",
                                  section.group(1) if section else "", re.DOTALL))
    for title, lines in parts.items():
        subsections[title] = "\n".join(lines)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"## {HEADING}", "",
             (f"Last run on {when}, {platform.platform()}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}, PostgreSQL 15 on the same machine (default "
              "settings, synchronous_commit on); SQLite in WAL with synchronous=NORMAL. The "
              "machine was shared with other jobs (load average "
              f"{load:.1f} before the run), so runs spread widely."), ""]
    order = [*TITLES.values(), *(t for t in subsections if t not in TITLES.values())]
    for title in order:
        if title in subsections:
            lines += [title, "", subsections[title].strip("\n"), ""]
    write_section(HEADING, "\n".join(lines))
