"""`gepa-trace collect` (the OTLP receiver) and `gepa-trace ingest` (OTLP files)."""

from __future__ import annotations

import signal
import time

import click

from gepa_trace.cli.common import (
    fail,
    handles_errors,
    json_option,
    print_json,
    progress,
    store_option,
)


@click.command()
@store_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback unless you say otherwise).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=4318, show_default=True,
              help="OTLP/HTTP port (0: pick a free one).")
@click.option("--grpc-port", type=click.IntRange(-1, 65535), default=4317, show_default=True,
              help="OTLP/gRPC port (0: pick a free one, -1: no gRPC).")
@click.option("--token", envvar="GEPA_TRACE_COLLECT_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' (env GEPA_TRACE_COLLECT_TOKEN).")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=16.0,
              show_default=True, help="Largest OTLP/HTTP request body, after decompression.")
@click.option("--max-grpc-message-mb", type=click.FloatRange(min=0.001), default=4.0,
              show_default=True,
              help="Largest OTLP/gRPC message, after decompression (the OpenTelemetry "
                   "Collector's default; exporters batch 512 spans, far under it). "
                   "Enforced by grpc before the message reaches Python; over it clients "
                   "get RESOURCE_EXHAUSTED.")
@click.option("--max-pending-spans", type=click.IntRange(min=1), default=100_000,
              show_default=True, help="Spans waiting for the writer before clients get 429.")
@click.option("--max-memory-mb", type=click.FloatRange(min=1), default=512.0,
              show_default=True,
              help="Memory that requests in flight may hold (body, inflated bytes, decoded "
                   "spans), counted before decoding; over it clients get 429 + Retry-After. "
                   "The default keeps the collector under 1 GB.")
@click.option("--max-connections", type=click.IntRange(min=1), default=256,
              show_default=True,
              help="Open HTTP connections served at once; past it /healthz is still "
                   "answered, other requests get 503.")
@click.option("--request-timeout", type=click.FloatRange(min=0.1), default=8.0,
              show_default=True,
              help="Seconds from a request's first byte to its answer (headers within "
                   "5 s; idle keep-alive connections close after 30 s).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Collector processes sharing the ports (default on PostgreSQL: one "
                   "per CPU, 2 to 4; 1 on SQLite, which takes one writer at a time). "
                   "--max-memory-mb is divided among them; /healthz answers for the "
                   "worker that took the connection.")
@click.option("--reuse-port", is_flag=True, hidden=True,
              help="Internal: this process is a worker of another's --workers.")
@handles_errors
def collect(store, host, http_port, grpc_port, token, max_body_mb, max_grpc_message_mb,
            max_pending_spans, max_memory_mb, max_connections, request_timeout, workers,
            reuse_port):
    """Receive OpenTelemetry traces over OTLP and store them.

    Point any OTLP exporter here (OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 for
    http/protobuf or http/json, http://127.0.0.1:4317 for grpc). A 200 means the spans
    are committed. Also: POST /v1/feedback (JSON with trace_id, score, label, comment,
    name, source, span_id) and GET /healthz (store writable, queue lag, memory and
    connections; 503 when the store refuses writes). Hostile clients are bounded: memory
    of requests in flight, message sizes (HTTP --max-body-mb, gRPC --max-grpc-message-mb),
    connections, and header, body and request deadlines. SIGTERM or Ctrl-C stops
    accepting, finishes what was accepted, and exits 0. On PostgreSQL several worker
    processes share the ports (--workers); if one dies, all stop and the exit is 1.

    \b
    Examples:
      gepa-trace collect
      gepa-trace collect --store postgresql+psycopg://u:p@db/traces --token s3cret
      gepa-trace collect --host 0.0.0.0 --http-port 4318 --grpc-port -1
      gepa-trace collect --store postgresql+psycopg://u:p@db/traces --workers 4
    """
    from gepa_trace.collectors.otlp import Collector, CollectorConfig, tune_process_for_ingest
    from gepa_trace.collectors.workers import (
        STOPPED_LINE,
        WorkerFailed,
        Workers,
        default_workers,
        sharing_unsupported,
        stop_with_first,
        worker_environment,
    )
    from gepa_trace.store import open_store, safe_url

    db = open_store(store, create=True)  # a collector is what creates a store
    workers = workers or (1 if reuse_port else default_workers(db.dialect))
    if workers > 1 and db.dialect == "sqlite":
        fail(f"--workers {workers} needs a PostgreSQL store: SQLite takes one writer at "
             "a time", 2)
    unsupported = sharing_unsupported() if workers > 1 else None
    if unsupported:
        fail(f"--workers {workers}: {unsupported}", 2)
    max_memory_mb = max(1.0, max_memory_mb / workers)  # the bound holds for all of them
    config = CollectorConfig(host=host, http_port=http_port,
                             grpc_port=None if grpc_port == -1 else grpc_port, token=token,
                             max_body_bytes=int(max_body_mb * 1024 * 1024),
                             max_grpc_message_bytes=int(max_grpc_message_mb * 1024 * 1024),
                             max_pending_spans=max_pending_spans,
                             max_memory_bytes=int(max_memory_mb * 1024 * 1024),
                             max_connections=max_connections,
                             request_timeout_s=request_timeout,
                             header_timeout_s=min(5.0, request_timeout),
                             reuse_port=reuse_port or workers > 1)
    _raise_file_limit()
    _return_large_buffers_to_the_os()
    tune_process_for_ingest()
    # The handler only notes the signal: taking a lock there (Event.set) deadlocks when
    # a second signal comes while the first handler holds it (Ctrl-C on the terminal,
    # then SIGTERM from the first process, reach a worker together).
    signals: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: signals.append(signum))
    if reuse_port:
        stop_with_first()  # a worker of another process: stop when it ends
    collector = Collector(db, config).start()
    pool = Workers()
    if workers > 1:
        grpc = -1 if collector.grpc_port is None else collector.grpc_port
        try:
            pool.start(workers - 1, [
                "--workers", "1", "--reuse-port", "--host", host,
                "--http-port", str(collector.http_port), "--grpc-port", str(grpc),
                "--max-body-mb", repr(max_body_mb),
                "--max-grpc-message-mb", repr(max_grpc_message_mb),
                "--max-pending-spans", str(max_pending_spans),
                "--max-memory-mb", repr(max_memory_mb),
                "--max-connections", str(max_connections),
                "--request-timeout", repr(request_timeout)],
                worker_environment(str(db.url), token), progress)
        except WorkerFailed as exc:
            collector.stop()
            fail(f"collect: {exc}")
    grpc_text = f" grpc={host}:{collector.grpc_port}" if collector.grpc_port is not None else ""
    progress(f"collect: listening http={host}:{collector.http_port}{grpc_text} "
             f"store={safe_url(db.url)}" + (" (token required)" if token else "")
             + (f" ({workers} workers)" if workers > 1 else ""))
    gone = None
    try:
        while not signals:
            time.sleep(0.1)
            gone = pool.exited()
            if gone:
                # Ctrl-C reaches the workers too: one may end a moment before we see it
                time.sleep(0.5)
                if not signals:
                    break
                gone = None
    finally:
        progress("collect: stopping; finishing accepted requests")
        pool.terminate()
        collector.stop()
        pool.wait()
        stats = collector.receiver.stats
        own = (collector.writer.stored_spans, collector.writer.transactions,
               stats.requests, stats.spans_rejected)
        progress(STOPPED_LINE.format(*own))
        if workers > 1:
            counts = [sum(c) for c in zip(own, *pool.totals.values())]
            progress(f"collect: all {workers} workers stopped; {counts[0]} spans stored in "
                     f"{counts[1]} transactions from {counts[2]} requests, {counts[3]} "
                     "rejected" + ("" if len(pool.totals) == workers - 1
                                   else " (a worker gave no count)"))
    if gone:
        fail(f"collect: {gone}; the other workers were stopped")


def _raise_file_limit() -> None:
    """Soft limit on open files up to the hard one: each connection is a descriptor, and
    the default 1024 is below what ``--max-connections`` plus the overflow may hold."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):
        pass  # not raisable here: the connection cap still holds


def _return_large_buffers_to_the_os() -> None:
    """Have glibc map every buffer over 256 KB on its own and unmap it when freed.

    Request bodies are inflated into buffers of megabytes, each in its handler thread.
    By default glibc raises its mmap threshold after such a buffer is freed (up to
    32 MB) and keeps later ones in per-thread heaps that it seldom gives back: under a
    flood of gzip bodies, refused within the memory bound, the collector's resident
    memory still grew to 1.5x the bound (75 -> 294 MB with a 200 MB bound; 144 MB
    with this fixed threshold, tests/test_collector_hostile.py).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD, fixed (no dynamic raise)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator keeps its own policy


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@store_option
@json_option
@handles_errors
def ingest(files, store, as_json):
    """Load OTLP trace files: JSON (one request, or one per line) or protobuf.

    Spans from any convention (ours, OpenInference, OTel GenAI, OpenLLMetry) are stored
    as received and read the same way as spans sent to `gepa-trace collect`. A file that
    cannot be read is named on stderr and skipped; the exit code is then 1.

    \b
    Examples:
      gepa-trace ingest otel-collector-export.jsonl
      gepa-trace ingest request.pb more/*.json --json
    """
    from gepa_trace.collectors.otlp import ingest_files
    from gepa_trace.store import open_store

    report = ingest_files(open_store(store, create=True), list(files))
    for error in report.errors:
        click.echo(f"error: {error}", err=True)
    if as_json:
        print_json(report.as_dict())
    else:
        click.echo(f"{report.spans} spans from {report.requests} requests in {report.files} "
                   f"files" + (f", {report.rejected} spans rejected" if report.rejected else ""))
    if report.errors:
        fail(f"{len(report.errors)} of {len(files)} files could not be read")
