"""Collector throughput: 8 concurrent exporters send 200,000 spans over OTLP/HTTP
protobuf, then over OTLP/gRPC, to an in-process `Collector` on 127.0.0.1 backed by a
fresh SQLite store. Every span must be stored exactly once (counted and compared by id).

    .venv/bin/python bench/bench_collector.py [--spans 200000] [--exporters 8]
        [--batch 512] [--store URL] [--no-write]
    .venv/bin/python bench/bench_collector.py --versus-raw [--pg URL] [--repeats 3]
    .venv/bin/python bench/bench_collector.py --two-collectors [--pg URL] [--repeats 3]
    .venv/bin/python bench/bench_collector.py --stages [--spans 50000] [--store URL]

The spans look like openinference-instrumentation-langchain's: traces of a CHAIN with a
PROMPT and an LLM child (messages, model, tokens, metadata). The exporters send
pre-encoded ExportTraceServiceRequests of ``--batch`` spans (the BatchSpanProcessor
default is 512) and retry on 429/503/UNAVAILABLE as OTLP clients do, so the number
measures the receiver: decoding, deriving columns and committing. The exporters run in
a separate process (as real ones do), so they do not share the collector's GIL; the
collector's CPU time per span is reported too, since the machine may be shared. Results
are printed
and, unless --no-write, written to the collector section of bench/RESULTS.md.

``--versus-raw`` (bench/collector_vs_raw.py) measures the collector against the raw
baseline of the same rows on both databases in one run; ``--two-collectors`` measures two
`gepa-trace collect` processes on one PostgreSQL store against one. Both write the
"Collector on PostgreSQL" section.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _kv(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _trace_spans(rng: random.Random, trace_no: int) -> list[Span]:
    trace_id = rng.getrandbits(128).to_bytes(16, "big")
    ids = [rng.getrandbits(64).to_bytes(8, "big") for _ in range(3)]
    t0 = 1_700_000_000_000_000_000 + trace_no * 10_000_000
    meta = json.dumps({"langgraph_node": "planner", "langgraph_step": 1})
    question = f"question {trace_no}: where should I travel in spring?"
    prompt = Span(trace_id=trace_id, span_id=ids[1], parent_span_id=ids[0],
                  name="ChatPromptTemplate", kind=1, start_time_unix_nano=t0 + 1000,
                  end_time_unix_nano=t0 + 2000, attributes=[
                      _kv("openinference.span.kind", "PROMPT"),
                      _kv("input.value", question),
                      _kv("output.value", json.dumps({"messages": [
                          {"type": "system", "content": "You plan trips. Be brief."},
                          {"type": "human", "content": f"Plan: {question}"}]})),
                      _kv("output.mime_type", "application/json"),
                      _kv("llm.prompt_template.template", "You plan trips. Be brief."),
                      _kv("metadata", meta)])
    llm = Span(trace_id=trace_id, span_id=ids[2], parent_span_id=ids[0],
               name="ChatOpenAI", kind=1, start_time_unix_nano=t0 + 3000,
               end_time_unix_nano=t0 + 9000, attributes=[
                   _kv("openinference.span.kind", "LLM"),
                   _kv("llm.input_messages.0.message.role", "system"),
                   _kv("llm.input_messages.0.message.content", "You plan trips. Be brief."),
                   _kv("llm.input_messages.1.message.role", "user"),
                   _kv("llm.input_messages.1.message.content", f"Plan: {question}"),
                   _kv("llm.output_messages.0.message.role", "assistant"),
                   _kv("llm.output_messages.0.message.content", "Lisbon, for the light."),
                   _kv("llm.model_name", "gpt-4.1-mini"),
                   _kv("llm.invocation_parameters", '{"temperature": 0.2}'),
                   _kv("llm.token_count.prompt", 31), _kv("llm.token_count.completion", 7),
                   _kv("llm.token_count.total", 38), _kv("metadata", meta)])
    chain = Span(trace_id=trace_id, span_id=ids[0], name="planner", kind=1,
                 start_time_unix_nano=t0, end_time_unix_nano=t0 + 10_000, attributes=[
                     _kv("openinference.span.kind", "CHAIN"), _kv("input.value", question),
                     _kv("output.value", "Lisbon, for the light."), _kv("metadata", meta)])
    return [prompt, llm, chain]  # in end order, as a BatchSpanProcessor sends them


def make_requests(total_spans: int, batch: int, seed: int = 0,
                  service: str = "bench-agent") -> tuple[list[bytes], set[tuple[str, str]]]:
    """Serialized ExportTraceServiceRequests holding ``total_spans`` spans, and their ids."""
    rng = random.Random(seed)
    spans: list[Span] = []
    trace_no = 0
    while len(spans) < total_spans:
        spans.extend(_trace_spans(rng, trace_no + seed * 10_000_000))
        trace_no += 1
    spans = spans[:total_spans]
    ids = {(s.trace_id.hex(), s.span_id.hex()) for s in spans}
    resource = [_kv("service.name", service), _kv("telemetry.sdk.language", "python")]
    bodies = []
    for start in range(0, len(spans), batch):
        request = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            resource={"attributes": resource},
            scope_spans=[ScopeSpans(scope={"name": "openinference.instrumentation.langchain"},
                                    spans=spans[start:start + batch])])])
        bodies.append(request.SerializeToString())
    return bodies, ids


def send_http(port: int, bodies: list[bytes], exporters: int, acked: list | None = None,
              stop: threading.Event | None = None) -> int:
    """Send ``bodies`` from ``exporters`` threads; returns the number of 200 replies.
    ``acked`` (if given) receives the index of every body that got a 200."""
    queue = list(enumerate(bodies))
    lock = threading.Lock()
    ok = [0]

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while stop is None or not stop.is_set():
            with lock:
                if not queue:
                    break
                index, body = queue.pop()
            while True:
                try:
                    conn.request("POST", "/v1/traces", body,
                                 {"Content-Type": "application/x-protobuf"})
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException):
                    if stop is not None and stop.is_set():
                        return
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    time.sleep(0.05)
                    continue
                if response.status == 200:
                    with lock:
                        ok[0] += 1
                        if acked is not None:
                            acked.append(index)
                    break
                if response.status in (429, 502, 503, 504):
                    time.sleep(float(response.getheader("Retry-After") or 0.2) / 4)
                    continue
                raise RuntimeError(f"HTTP {response.status}: {response.read()!r}")
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(exporters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok[0]


def send_grpc(port: int, bodies: list[bytes], exporters: int) -> int:
    import grpc

    requests = [trace_service_pb2.ExportTraceServiceRequest.FromString(b) for b in bodies]
    lock = threading.Lock()
    ok = [0]

    def worker() -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        while True:
            with lock:
                if not requests:
                    break
                request = requests.pop()
            while True:
                try:
                    stub.Export(request, timeout=120)
                    break
                except grpc.RpcError as exc:
                    if exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.RESOURCE_EXHAUSTED):
                        time.sleep(0.05)
                        continue
                    raise
            with lock:
                ok[0] += 1
        channel.close()

    threads = [threading.Thread(target=worker) for _ in range(exporters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok[0]


def stored_ids(store) -> list[tuple[str, str]]:
    import sqlalchemy as sa

    with store.read() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT trace_id, span_id FROM spans"))]


def sender_process(transport: str, port: int, spans: int, exporters: int, batch: int,
                   seed: int) -> None:
    """The exporters' side, in its own process (as real exporters are): encode first,
    say "ready", wait for "go" on stdin, send, print the elapsed seconds and the CPU
    seconds sending took."""
    bodies, _ids = make_requests(spans, batch, seed=seed)
    print("ready", flush=True)
    sys.stdin.readline()
    started, cpu = time.perf_counter(), time.process_time()
    if transport == "http":
        send_http(port, bodies, exporters)
    else:
        send_grpc(port, bodies, exporters)
    print(json.dumps({"seconds": time.perf_counter() - started,
                      "cpu_s": time.process_time() - cpu}), flush=True)


def start_senders(transport: str, ports: list[int], spans: int, exporters: int, batch: int,
                  seeds: list[int]) -> list:
    """One ``sender_process`` per port (``spans`` each, with its seed), started and
    ready: they have encoded their requests and wait for ``go``."""
    import subprocess

    senders = [subprocess.Popen(
        [sys.executable, __file__, "--sender", transport, "--port", str(port),
         "--spans", str(spans), "--exporters", str(exporters), "--batch", str(batch),
         "--seed", str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for port, seed in zip(ports, seeds)]
    for sender in senders:
        if sender.stdout.readline().strip() != "ready":
            raise RuntimeError("a sender process failed to start")
    return senders


def go(senders: list) -> list[float]:
    """Let the ready senders send at once; each one's seconds, once all are done."""
    for sender in senders:
        sender.stdin.write("go\n")
        sender.stdin.flush()
    seconds = [json.loads(sender.stdout.readline())["seconds"] for sender in senders]
    for sender in senders:
        sender.wait(60)
    return seconds


def run(transport: str, url: str, spans: int, exporters: int, batch: int, seed: int) -> dict:
    from gepa_trace.collectors.otlp import Collector, CollectorConfig, tune_process_for_ingest
    from gepa_trace.store import open_store

    store = open_store(url, create=True)  # as `gepa-trace collect` does
    bodies, ids = make_requests(spans, batch, seed=seed)
    tune_process_for_ingest()  # as `gepa-trace collect` does
    collector = Collector(store, CollectorConfig(http_port=0, grpc_port=0)).start()
    port = collector.http_port if transport == "http" else collector.grpc_port
    senders = start_senders(transport, [port], spans, exporters, batch, [seed])
    cpu = time.process_time()
    (elapsed,) = go(senders)
    collector_cpu = time.process_time() - cpu
    collector.stop()
    got = stored_ids(store)
    exactly_once = len(got) == len(set(got)) == len(ids) and set(got) == ids
    return {"transport": transport, "spans": spans, "seconds": round(elapsed, 2),
            "spans_per_s": round(spans / elapsed), "stored": len(got),
            "collector_cpu_us_per_span": round(collector_cpu / spans * 1e6, 1),
            "writer_busy": round(collector.writer.busy_s / elapsed, 2),
            "exactly_once": exactly_once, "transactions": collector.writer.transactions,
            "requests": len(bodies)}


def stages(url: str, spans: int, batch: int, per_transaction: int = 4) -> dict:
    """The collector's CPU per span by stage, in one thread with no senders (a stable
    measure on a shared machine, where rates are not): parse the protobuf request, build
    its rows (``prepared_batches``, what the request threads do), write them
    (``write_prepared``, what the writer thread does, ``per_transaction`` requests a
    transaction as under load). ``time.process_time``, so the database server's own
    CPU (PostgreSQL) is not counted; ``write_wall`` is the writer's wall time, which
    adds the database's work and the round trips."""
    from gepa_trace.collectors.otlp import tune_process_for_ingest, tune_sqlite_for_bulk_writes
    from gepa_trace.collectors.otlp_decode import Decoded, decode_protobuf, prepared_batches
    from gepa_trace.store import open_store
    from gepa_trace.store.spans import write_prepared

    store = open_store(url, create=True)
    tune_sqlite_for_bulk_writes(store)
    bodies, _ids = make_requests(spans, batch)
    tune_process_for_ingest()
    cpu = {"parse": 0.0, "rows": 0.0, "write": 0.0}
    write_wall = 0.0
    waiting: list = []
    for n, body in enumerate(bodies, 1):
        started = time.process_time()
        request = decode_protobuf(body)
        parsed = time.process_time()
        waiting += prepared_batches(request, Decoded())
        built = time.process_time()
        cpu["parse"] += parsed - started
        cpu["rows"] += built - parsed
        if n % per_transaction == 0 or n == len(bodies):
            wall_started = time.perf_counter()
            write_prepared(store, waiting)
            write_wall += time.perf_counter() - wall_started
            waiting = []
            cpu["write"] += time.process_time() - built
    result = {f"{stage}_us_per_span": round(seconds / spans * 1e6, 1)
              for stage, seconds in cpu.items()}
    # the writer's wall time: its CPU plus the database's work and the round trips
    result["write_wall_us_per_span"] = round(write_wall / spans * 1e6, 1)
    return result


def write_results(results: list[dict], args: argparse.Namespace) -> None:
    from results import write_section  # bench/results.py, beside this file

    postgres = bool(args.store) and args.store.startswith("postgresql")
    heading = ("Collector on PostgreSQL (bench/bench_collector.py --store)" if postgres
               else "Collector (bench/bench_collector.py)")
    store = ("PostgreSQL 15 store on the same machine (default settings)" if postgres
             else "SQLite store (WAL, synchronous=NORMAL)")
    store_flag = " --store postgresql+psycopg://..." if postgres else ""
    lines = [f"## {heading}", "",
             (f"`.venv/bin/python bench/bench_collector.py --spans {args.spans} "
              f"--exporters {args.exporters} --batch {args.batch}"
              f"{store_flag}` on "
              f"{platform.platform()}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}, {store}; "
              "the exporters run in a separate process on the same machine; load average "
              f"{args.load_before:.1f} before the run (the machine is shared with other "
              "jobs)."), "",
             ("| transport | spans | exporters | seconds | spans/s | collector CPU µs/span | "
              "writer busy | transactions | stored exactly once |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['transport']} | {r['spans']} | {args.exporters} | {r['seconds']} | "
                     f"{r['spans_per_s']} | {r['collector_cpu_us_per_span']} | "
                     f"{r['writer_busy']:.0%} | {r['transactions']} for {r['requests']} "
                     f"requests | {'yes' if r['exactly_once'] else 'NO'} |")
    http = next((r for r in results if r["transport"] == "http"), None)
    database = "PostgreSQL" if postgres else "SQLite"
    lines += ["", ("Every reply was sent after its spans were committed (group commit: one "
                   "transaction for all requests waiting, never one per request). Writer busy is "
                   "the share of the run the single writer thread spent in transactions; near "
                   f"100% means {database} inserting into the spans table and its indexes "
                   "(primary key, agent, and partial component and run indexes) is the "
                   "limit, not decoding. Collector CPU counts all its threads.")]
    if http is not None:
        met = "met" if http["spans_per_s"] >= 20_000 else "NOT met on this run"
        lines.append(f"Target: at least 20,000 spans/s over HTTP: {http['spans_per_s']} ({met}).")
    if postgres:  # a subsection: --versus-raw and --two-collectors write the others
        from collector_vs_raw import write_subsections

        write_subsections({"### One collector, HTTP and gRPC (--store)": lines[2:]},
                          args.load_before)
        return
    section = "\n".join(lines) + "\n"
    write_section(heading, section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument("--exporters", type=int, default=8)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--store", default=None, help="store URL (default: a temp SQLite file)")
    parser.add_argument("--transport", choices=["http", "grpc", "both"], default="both")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--versus-raw", action="store_true",
                        help="collector vs raw COPY / executemany of the same rows")
    parser.add_argument("--two-collectors", action="store_true",
                        help="two collector processes on one PostgreSQL store vs one")
    parser.add_argument("--pg", default=os.environ.get(
        "GEPA_TRACE_TEST_PG", "postgresql+psycopg://gepa:gepa@127.0.0.1:5432/gepa_test"),
        help="PostgreSQL database for --versus-raw / --two-collectors (a schema per run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", action="store_true",
                        help="CPU per span of each stage, in one thread (prints, writes nothing)")
    parser.add_argument("--sender", choices=["http", "grpc"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sender:
        return sender_process(args.sender, args.port, args.spans, args.exporters, args.batch,
                              args.seed)
    if args.stages:
        if args.store and args.store.startswith("postgresql"):
            from collector_vs_raw import pg_schema

            with pg_schema(args.store) as url:  # a fresh schema, dropped afterwards
                print(json.dumps(stages(url, args.spans, args.batch)))
            return None
        with tempfile.TemporaryDirectory() as tmp:
            url = args.store or f"sqlite:///{tmp}/stages.db"
            print(json.dumps(stages(url, args.spans, args.batch)))
        return None
    if args.versus_raw or args.two_collectors:
        from collector_vs_raw import main_versus

        return main_versus(args)
    results = []
    args.load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for n, transport in enumerate(["http", "grpc"]):
            if args.transport not in (transport, "both"):
                continue
            url = args.store or f"sqlite:///{tmp}/bench-{transport}.db"
            result = run(transport, url, args.spans, args.exporters, args.batch, seed=n + 1)
            print(json.dumps(result))
            results.append(result)
    if not all(r["exactly_once"] for r in results):
        sys.exit("FAILED: some spans were lost or duplicated")
    if not args.no_write:
        write_results(results, args)


if __name__ == "__main__":
    main()
