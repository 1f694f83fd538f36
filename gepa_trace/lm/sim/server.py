"""An OpenAI-compatible chat-completions server for the simulated models, on loopback.

It lets a test (or a demo) exercise a real HTTP client path end to end, e.g. litellm's
``openai/`` provider::

    with serve() as server:                       # 127.0.0.1, a free port
        litellm.completion(model="openai/task", api_base=server.base_url, api_key="x", ...)

or from a shell: ``python -m gepa_trace.lm.sim.server --port 8765``.

Routes: ``POST /v1/chat/completions`` (``model`` is a sim model name, with or without the
``gepa-sim/`` prefix, options allowed as in ``task?latency_ms=50``; ``stream: true``
answers as server-sent events, with usage in the last chunk when
``stream_options.include_usage`` is set) and ``GET /v1/models``. Replies come from
``gepa_trace.lm.sim.generate``, the same function the in-process provider uses, so both
give the same text for the same request.

Injected faults are real HTTP errors: ``rate_limit`` -> 429 with ``Retry-After`` (and
``retry-after-ms``), ``timeout`` -> 504, ``server_error`` -> 500; an unknown model -> 404;
a bad body -> 400; a wrong key (when the server has one) -> 401; a behaviour that raises
-> 500. Errors have OpenAI's ``{"error": {"message", "type", "code"}}`` shape. The call
counters of ``gepa_trace.lm.sim`` count in the server's process.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from gepa_trace.lm import sim

_FAULT_STATUS = {"rate_limit": (429, "rate_limit_error", "rate_limit_exceeded"),
                 "timeout": (504, "timeout", "upstream_timeout"),
                 "server_error": (500, "server_error", "internal_error")}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI SDK's httpx client expects

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stderr
        return

    # ------------------------------------------------------------------ replies

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, type_: str, code: str | None = None,
                    headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": type_, "param": None,
                                           "code": code}}, headers)

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        if self.headers.get("Authorization", "") == f"Bearer {key}":
            return True
        self._send_error(401, "Incorrect API key provided (simulated server)",
                         "invalid_request_error", "invalid_api_key")
        return False

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        if self.path.rstrip("/") not in ("/v1/models", "/models"):
            self._send_error(404, f"no route GET {self.path}", "invalid_request_error")
            return
        if not self._authorized():
            return
        self._send_json(200, {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": sim.PROVIDER}
            for name in sim.MODELS]})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_error(404, f"no route POST {self.path}", "invalid_request_error")
            return
        if not self._authorized():
            return
        try:
            body = json.loads(raw or b"{}")
            model = body["model"]
            messages = body["messages"]
            if not isinstance(model, str) or not isinstance(messages, list):
                raise TypeError("model must be a string and messages a list")
        except (ValueError, KeyError, TypeError) as exc:
            self._send_error(400, f"invalid request body: {exc}", "invalid_request_error")
            return
        try:
            reply = sim.generate(model, messages, base=self.server.options)
        except sim.UnknownSimModel as exc:
            self._send_error(404, str(exc), "invalid_request_error", "model_not_found")
            return
        except sim.ConfigError as exc:
            self._send_error(400, str(exc), "invalid_request_error")
            return
        except sim.SimFault as exc:
            status, type_, code = _FAULT_STATUS[exc.kind]
            headers = {}
            if exc.kind == "rate_limit":
                headers = {"Retry-After": f"{exc.retry_after_s:g}",
                           "retry-after-ms": f"{exc.retry_after_s * 1000:g}"}
            self._send_error(status, str(exc), type_, code, headers)
            return
        except Exception as exc:  # noqa: BLE001 - a bug in a behaviour: answer, as servers do
            self._send_error(500, f"simulated model failed: {type(exc).__name__}: {exc}",
                             "server_error", "internal_error")
            return
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(model, reply, include_usage)
        else:
            self._send_json(200, _completion(model, reply))

    def _stream(self, model: str, reply: sim.SimReply, include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the stream's end is the connection's end
        self.end_headers()
        self.close_connection = True
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def event(delta: dict[str, Any], finish: str | None, usage: Any = None,
                  choices: bool = True) -> None:
            chunk: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk",
                                     "created": created, "model": model, "choices": []}
            if choices:
                chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
            if usage is not None:
                chunk["usage"] = usage
            self.wfile.write(b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n")

        event({"role": "assistant", "content": ""}, None)
        words = reply.text.split(" ")
        for i, word in enumerate(words):
            event({"content": word if i == len(words) - 1 else word + " "}, None)
        event({}, "length" if reply.malformed else "stop")
        if include_usage:
            event({}, None, _usage(reply), choices=False)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _usage(reply: sim.SimReply) -> dict[str, int]:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def _completion(model: str, reply: sim.SimReply) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                         "finish_reason": "length" if reply.malformed else "stop"}],
            "usage": _usage(reply)}


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client must not keep the process alive
    allow_reuse_address = True
    options: sim.SimOptions | None = None
    api_key: str | None = None


@dataclass
class SimServer:
    """A running server: ``url`` (http://127.0.0.1:PORT), ``base_url`` (``url`` + /v1)."""

    host: str
    port: int
    _server: _Server
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def close(self) -> None:
        """Stop serving and free the port; waits for the serving thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(host: str = "127.0.0.1", port: int = 0, *, options: sim.SimOptions | None = None,
          api_key: str | None = None) -> SimServer:
    """Start serving in a background thread and return at once (``port=0``: a free port).

    ``options`` are the defaults of every request (model-string options override them);
    None reads the GEPA_SIM_* environment at each request. With ``api_key`` set, requests
    must carry ``Authorization: Bearer <api_key>``.
    """
    server = _Server((host, port), _Handler)
    server.options = options
    server.api_key = api_key
    # A short poll interval makes close() quick (shutdown waits for the next poll).
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"gepa-sim-server:{port}", daemon=True)
    thread.start()
    return SimServer(host, server.server_address[1], server, thread)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gepa_trace.lm.sim.server",
        description="Serve the simulated models (gepa-sim/*) as an OpenAI-compatible API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=None, help="default: $GEPA_SIM_SEED or 0")
    parser.add_argument("--latency-ms", type=float, default=None,
                        help="latency per call (default: $GEPA_SIM_LATENCY_MS or 0)")
    parser.add_argument("--faults", default=None,
                        help="e.g. rate_limit=0.1,timeout=0.05 (default: $GEPA_SIM_FAULTS)")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    args = parser.parse_args(argv)
    options = sim.SimOptions.from_env()
    changes: dict[str, Any] = sim.parse_faults(args.faults) if args.faults is not None else {}
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.latency_ms is not None:
        changes["latency_ms"] = args.latency_ms
    options = options.updated(changes, source="command line")
    server = serve(args.host, args.port, options=options, api_key=args.api_key)
    print(f"serving simulated models at {server.base_url} (simulated, not a real LLM)",
          flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
