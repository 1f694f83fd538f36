"""`gepa-trace collect` (the OTLP receiver) and `gepa-trace ingest` (OTLP files)."""

from __future__ import annotations

import signal
import threading

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
@handles_errors
def collect(store, host, http_port, grpc_port, token, max_body_mb, max_grpc_message_mb,
            max_pending_spans, max_memory_mb, max_connections, request_timeout):
    """Receive OpenTelemetry traces over OTLP and store them.

    Point any OTLP exporter here (OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 for
    http/protobuf or http/json, http://127.0.0.1:4317 for grpc). A 200 means the spans
    are committed. Also: POST /v1/feedback (JSON with trace_id, score, label, comment,
    name, source, span_id) and GET /healthz (store writable, queue lag, memory and
    connections; 503 when the store refuses writes). Hostile clients are bounded: memory
    of requests in flight, message sizes (HTTP --max-body-mb, gRPC --max-grpc-message-mb),
    connections, and header, body and request deadlines. SIGTERM or Ctrl-C stops
    accepting, finishes what was accepted, and exits 0.

    \b
    Examples:
      gepa-trace collect
      gepa-trace collect --store postgresql+psycopg://u:p@db/traces --token s3cret
      gepa-trace collect --host 0.0.0.0 --http-port 4318 --grpc-port -1
    """
    from gepa_trace.collectors.otlp import Collector, CollectorConfig, tune_process_for_ingest
    from gepa_trace.store import open_store, safe_url

    db = open_store(store, create=True)  # a collector is what creates a store
    config = CollectorConfig(host=host, http_port=http_port,
                             grpc_port=None if grpc_port == -1 else grpc_port, token=token,
                             max_body_bytes=int(max_body_mb * 1024 * 1024),
                             max_grpc_message_bytes=int(max_grpc_message_mb * 1024 * 1024),
                             max_pending_spans=max_pending_spans,
                             max_memory_bytes=int(max_memory_mb * 1024 * 1024),
                             max_connections=max_connections,
                             request_timeout_s=request_timeout,
                             header_timeout_s=min(5.0, request_timeout))
    _raise_file_limit()
    _return_large_buffers_to_the_os()
    tune_process_for_ingest()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    collector = Collector(db, config).start()
    grpc_text = f" grpc={host}:{collector.grpc_port}" if collector.grpc_port is not None else ""
    progress(f"collect: listening http={host}:{collector.http_port}{grpc_text} "
             f"store={safe_url(db.url)}" + (" (token required)" if token else ""))
    try:
        while not stop.wait(0.5):
            pass
    finally:
        progress("collect: stopping; finishing accepted requests")
        collector.stop()
        stats = collector.receiver.stats
        progress(f"collect: stopped; {collector.writer.stored_spans} spans stored in "
                 f"{collector.writer.transactions} transactions from {stats.requests} "
                 f"requests, {stats.spans_rejected} rejected")


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
