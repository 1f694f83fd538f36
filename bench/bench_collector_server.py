"""Which HTTP server for the collector: the standard library's (what `collect` uses) or
uvicorn with a minimal ASGI app, measured in the same run on the same receiver.

    .venv/bin/pip install uvicorn httptools   # not dependencies: this experiment only
    .venv/bin/python bench/bench_collector_server.py [--spans 100000] [--rounds 2]

Both servers hand requests to the same ``Receiver`` (admission, decoding, group-commit
writer into a fresh SQLite store); the exporters are bench/bench_collector.py's sender
process (8 exporters, batches of 512, retrying 429/503). The servers alternate, so a
shared machine's load falls on both. Prints one JSON line per run and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_collector


def _handle(receiver, path: str, headers: dict[str, str], body: bytes
            ) -> tuple[int, str, bytes]:
    """What OTLPHandler.do_POST does for /v1/traces, for the ASGI app."""
    from gepa_trace.collectors.admission import OverBudget, TooLarge
    from gepa_trace.collectors.otlp_decode import (
        INTERNAL,
        JSON,
        PROTOBUF,
        RequestError,
        decode_request,
        encode_response,
        encode_status,
        media_type,
    )
    from gepa_trace.collectors.otlp_writer import WriteFailed, WriterBusy

    kind = PROTOBUF if media_type(headers.get("content-type")) == PROTOBUF else JSON
    if path != "/v1/traces":
        return 404, kind, encode_status(INTERNAL, "no such path", kind)
    with receiver.budget.ticket() as ticket:
        try:
            ticket.take(len(body))
            request, decoded = decode_request(body, headers.get("content-type"),
                                              headers.get("content-encoding"),
                                              receiver.max_body_bytes, ticket)
            receiver.export(request, decoded)
            return 200, kind, encode_response(decoded, kind)
        except RequestError as exc:
            return exc.status, kind, encode_status(INTERNAL, exc.message, kind)
        except (WriterBusy, OverBudget) as exc:
            return 429, kind, encode_status(INTERNAL, str(exc), kind)
        except (TooLarge, WriteFailed, TimeoutError) as exc:
            return 503, kind, encode_status(INTERNAL, str(exc), kind)


def asgi_app(receiver, executor: ThreadPoolExecutor):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        status, kind, payload = await asyncio.get_running_loop().run_in_executor(
            executor, _handle, receiver, scope["path"], headers, b"".join(chunks))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind.encode()),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    return app


def _start_uvicorn(receiver, http: str):
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="asgi")
    config = uvicorn.Config(asgi_app(receiver, executor), log_level="warning",
                            lifespan="off", http=http, loop="asyncio",
                            limit_concurrency=256, timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        executor.shutdown()

    return sock.getsockname()[1], stop


def run(server_kind: str, spans: int, exporters: int, batch: int, seed: int) -> dict:
    from gepa_trace.collectors.otlp import Collector, CollectorConfig, tune_process_for_ingest
    from gepa_trace.store import open_store

    directory = tempfile.mkdtemp(prefix="gepa-bench-server-")
    store = open_store(f"sqlite:///{directory}/collector.db", create=True)
    tune_process_for_ingest()  # as `gepa-trace collect` does
    stdlib = server_kind == "http.server"
    collector = Collector(store, CollectorConfig(http_port=0 if stdlib else None,
                                                 grpc_port=None)).start()
    if stdlib:
        port, stop = collector.http_port, (lambda: None)
    else:
        port, stop = _start_uvicorn(collector.receiver, server_kind.split("+", 1)[1])
    senders = bench_collector.start_senders("http", [port], spans, exporters, batch, [seed])
    cpu = time.process_time()
    (elapsed,) = bench_collector.go(senders)
    cpu = time.process_time() - cpu
    stop()
    collector.stop()
    return {"server": server_kind, "spans": spans, "seconds": round(elapsed, 2),
            "spans_per_s": round(spans / elapsed), "stored": collector.writer.stored_spans,
            "collector_cpu_us_per_span": round(cpu / spans * 1e6, 1),
            "writer_busy": round(collector.writer.busy_s / elapsed, 2),
            "load_before": round(os.getloadavg()[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--exporters", type=int, default=8)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results = []
    for round_no in range(args.rounds):
        for kind in ("http.server", "uvicorn+httptools", "uvicorn+h11"):
            result = run(kind, args.spans, args.exporters, args.batch, seed=round_no)
            print(json.dumps(result), flush=True)
            results.append(result)
    print("\n| server | round | spans/s | collector CPU µs/span | writer busy | load |")
    print("|---|---|---|---|---|---|")
    for index, r in enumerate(results):
        print(f"| {r['server']} | {index // 3 + 1} | {r['spans_per_s']} | "
              f"{r['collector_cpu_us_per_span']} | {r['writer_busy']:.0%} | "
              f"{r['load_before']} |")


if __name__ == "__main__":
    main()
