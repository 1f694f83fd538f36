"""The offline simulated provider: small deterministic models that litellm calls like real ones.

Every model is a module of this package with one function::

    reply(messages: list[dict[str, str]], rng: random.Random) -> str

``gepa-sim/task``, ``gepa-sim/reflect`` and ``gepa-sim/judge`` are the simulated world
(task.py, reflect.py, judge.py); ``gepa-sim/echo`` is a trivial model for tests of the
plumbing. They are reached in two ways that share everything below:

- in process, as the litellm custom provider ``gepa-sim`` (``register()``, done for you
  by ``gepa_trace.lm.LM``): ``litellm.completion(model="gepa-sim/task", ...)``;
- over HTTP, from the OpenAI-compatible server in ``gepa_trace.lm.sim.server``.

Contracts:

- Same prompt, same reply: the ``rng`` given to ``reply`` is seeded from the seed, the
  model name and the messages (roles and text), never from call order or concurrency.
- Options come from the model string (``gepa-sim/task?seed=3&latency_ms=100&rate_limit=0.2``),
  else from the environment (``GEPA_SIM_SEED``, ``GEPA_SIM_LATENCY_MS``, ``GEPA_SIM_FAULTS``
  such as ``rate_limit=0.1,timeout=0.05,malformed=0.1``), else defaults (no latency, no
  faults, seed 0). Fault kinds: ``rate_limit`` (litellm RateLimitError / HTTP 429 with
  Retry-After), ``timeout`` (litellm Timeout / HTTP 504), ``server_error`` (HTTP 500) and
  ``malformed`` (the reply truncated, its fenced blocks gone). Whether the n-th request
  for one prompt faults is decided by the seed, the prompt and n, so runs are repeatable.
  ``max_faults=N`` caps the faults per prompt (``rate_limit=1&max_faults=1``: every
  prompt is refused once, then served), ``retry_after`` is the pause a 429 asks for.
- ``mode=NAME`` picks a variant of a model (``MODES``), passed to its ``reply`` as
  ``mode=``: ``gepa-sim/reflect?mode=naive`` follows instructions it finds anywhere in
  its prompt, the untrusted data included (``reflect.py``). No mode: the default model.
- Prices are nominal and simulated (those of gpt-4.1-mini: $0.40 per million input
  tokens, $1.60 per million output tokens); tokens are estimated as characters / 4.
- ``call_counts()`` counts the replies each model actually served (malformed ones
  included, injected errors not), process-wide, so a test can prove a cache saved calls.

Importing this package is cheap: litellm is only imported by ``register()``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from gepa_trace.errors import ConfigError

PROVIDER = "gepa-sim"
PREFIX = PROVIDER + "/"
#: The models this package ships; each has a nominal (simulated) price registered with litellm.
MODELS = ("task", "reflect", "judge", "echo")
#: Nominal price of every simulated model, in dollars per token (labelled simulated in docs).
PRICE_PER_TOKEN = {"input": 0.40e-6, "output": 1.60e-6}
FAULT_KINDS = ("rate_limit", "timeout", "server_error", "malformed")
#: The variants (``?mode=``) each model has besides its default.
MODES = {"reflect": ("naive",)}
# Modules of this package that are not models.
_NOT_MODELS = frozenset({"server", "provider", "quoted", "injected"})
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

ReplyFn = Callable[[list[dict[str, str]], random.Random], str]


class UnknownSimModel(ConfigError):
    """A ``gepa-sim/<name>`` whose behaviour module does not exist."""


class SimFault(Exception):
    """An injected error: the provider turns it into litellm's exception, the server into HTTP."""

    def __init__(self, kind: str, model: str, retry_after_s: float = 0.0):
        super().__init__(f"simulated {kind.replace('_', ' ')} from {PREFIX}{model}")
        self.kind = kind
        self.model = model
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class SimOptions:
    """How a simulated model behaves: seed, latency per call, fault rates (0..1, summing <= 1)."""

    seed: int = 0
    latency_ms: float = 0.0
    rate_limit: float = 0.0
    timeout: float = 0.0
    server_error: float = 0.0
    malformed: float = 0.0
    retry_after: float = 0.05  # seconds a rate-limited client is told to wait
    max_faults: int | None = None  # at most this many faults per prompt (None: no cap)
    mode: str | None = None  # a variant of the model (MODES), None: the default

    @classmethod
    def from_env(cls) -> SimOptions:
        from gepa_trace.config import setting

        base = cls(seed=setting("sim_seed"), latency_ms=setting("sim_latency_ms"))
        return base.updated(parse_faults(setting("sim_faults")), source="GEPA_SIM_FAULTS")

    def updated(self, params: Mapping[str, Any], source: str = "model string") -> SimOptions:
        """A copy with ``params`` (strings or numbers) applied; unknown keys are an error."""
        known = {f.name: f.type for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, raw in params.items():
            if key not in known:
                raise ConfigError(f"unknown simulated-model option {key!r} in {source} "
                                  f"(known: {', '.join(known)})")
            try:
                if key == "mode":
                    changes[key] = str(raw) if raw not in (None, "") else None
                elif key == "max_faults" and raw in (None, "", "none"):
                    changes[key] = None
                else:
                    changes[key] = int(raw) if key in ("seed", "max_faults") else float(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"simulated-model option {key}={raw!r} in {source} "
                                  "is not a number") from None
        new = replace(self, **changes)
        rates = [getattr(new, k) for k in FAULT_KINDS]
        if any(r < 0 or r > 1 for r in rates) or sum(rates) > 1 + 1e-9:
            raise ConfigError(f"simulated fault rates in {source} must be in 0..1 and sum "
                              f"to at most 1, got {dict(zip(FAULT_KINDS, rates))}")
        if new.latency_ms < 0 or new.retry_after < 0 or (new.max_faults or 0) < 0:
            raise ConfigError(f"latency_ms, retry_after and max_faults in {source} must be >= 0")
        return new


@dataclass(frozen=True)
class SimReply:
    """What a simulated model answered, with its (estimated) token usage."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    malformed: bool = False


def parse_faults(text: str | None) -> dict[str, str]:
    """``"rate_limit=0.1,timeout=0.05"`` -> ``{"rate_limit": "0.1", "timeout": "0.05"}``."""
    out: dict[str, str] = {}
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"fault {part!r} must look like kind=rate, e.g. rate_limit=0.1")
        out[key.strip()] = value.strip()
    return out


def split_model(spec: str) -> tuple[str, dict[str, str]]:
    """``"gepa-sim/task?seed=3&latency_ms=5"`` (or without the prefix) -> ("task", params)."""
    from urllib.parse import parse_qsl

    body = spec.removeprefix(PREFIX)
    name, _, query = body.partition("?")
    return name, dict(parse_qsl(query, keep_blank_values=True))


def resolve(spec: str, base: SimOptions | None = None) -> tuple[str, SimOptions]:
    """The model name and its options: model-string params over ``base`` (default: env)."""
    name, params = split_model(spec)
    opts = (base or SimOptions.from_env()).updated(params, source=f"model {spec!r}")
    if opts.mode is not None and opts.mode not in MODES.get(name, ()):
        known = ", ".join(MODES.get(name, ())) or "none"
        raise ConfigError(f"{PREFIX}{name} has no mode {opts.mode!r} (modes: {known})")
    return name, opts


_replies: dict[str, ReplyFn] = {}


def reply_function(name: str) -> ReplyFn:
    """The ``reply`` of model ``name``, imported on first use; UnknownSimModel if none."""
    fn = _replies.get(name)
    if fn is not None:
        return fn
    module_name = f"{__name__}.{name}"
    if not _NAME.match(name) or name in _NOT_MODELS:
        raise UnknownSimModel(f"{PREFIX}{name} is not a simulated model "
                              f"(known: {', '.join(PREFIX + m for m in MODELS)})")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # the model exists but one of its imports is missing
            raise
        raise UnknownSimModel(f"{PREFIX}{name} is not a simulated model "
                              f"(known: {', '.join(PREFIX + m for m in MODELS)})") from None
    fn = getattr(module, "reply", None)
    if not callable(fn):
        raise UnknownSimModel(f"{module_name} has no reply(messages, rng) function")
    _replies[name] = fn
    return fn


def check_model(spec: str) -> str:
    """Validate a ``gepa-sim/...`` model string (name and options); return the bare name."""
    name, _ = resolve(spec)
    reply_function(name)
    return name


def plain_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Messages as ``{"role", "content"}`` with text content (multi-part content joined)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        out.append({"role": str(m.get("role", "user")), "content": "" if content is None
                    else str(content)})
    return out


def prompt_digest(seed: int, name: str, messages: list[dict[str, str]]) -> bytes:
    """The identity of a request: what the reply (and its fault draws) may depend on."""
    blob = json.dumps([seed, name, [[m["role"], m["content"]] for m in messages]],
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).digest()


def estimate_tokens(text: str) -> int:
    """About four characters a token, as for English text with common tokenizers."""
    return max(1, (len(text) + 3) // 4)


class _Counters:
    """Process-wide, thread-safe: replies served, faults injected, requests in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.served: dict[str, int] = {}
        self.faults: dict[str, dict[str, int]] = {}
        self.attempts: dict[bytes, tuple[int, int]] = {}  # prompt -> (requests, faults)
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}


_counters = _Counters()


def call_counts() -> dict[str, int]:
    """Replies served per model name (``{"task": 12, ...}``) since the last reset."""
    with _counters.lock:
        return dict(_counters.served)


def fault_counts() -> dict[str, dict[str, int]]:
    """Injected faults per model and kind (``{"task": {"rate_limit": 3}}``)."""
    with _counters.lock:
        return {m: dict(k) for m, k in _counters.faults.items()}


def peak_in_flight() -> dict[str, int]:
    """The most requests each model was serving at the same moment."""
    with _counters.lock:
        return dict(_counters.peak)


def reset_call_counts() -> None:
    """Zero the counters, and restart every prompt's fault sequence."""
    with _counters.lock:
        _counters.reset()


def _draw_fault(opts: SimOptions, name: str, digest: bytes) -> str | None:
    # The n-th request for one prompt draws from its own stream, so faults do not depend
    # on how requests for other prompts interleave.
    with _counters.lock:
        n, faults = _counters.attempts.get(digest, (0, 0))
        u = random.Random(digest + b"fault" + n.to_bytes(8, "big")).random()
        chosen = None
        if opts.max_faults is None or faults < opts.max_faults:
            edge = 0.0
            for kind in FAULT_KINDS:
                edge += getattr(opts, kind)
                if u < edge:
                    chosen = kind
                    break
        _counters.attempts[digest] = (n + 1, faults + (chosen is not None))
    return chosen


def malform(text: str, rng: random.Random) -> str:
    """A broken reply: fences removed and cut off part way, as a truncated generation looks."""
    flat = text.replace("```", "").strip()
    if len(flat) < 8:
        return flat[: max(1, len(flat) // 2)]
    cut = int(len(flat) * rng.uniform(0.3, 0.6))
    space = flat.rfind(" ", 0, cut)
    return flat[: space if space > 0 else cut]


def generate(spec: str, messages: Iterable[Mapping[str, Any]], *,
             base: SimOptions | None = None, sleep: bool = True) -> SimReply:
    """Serve one request for model ``spec``: latency, maybe a fault, else the model's reply.

    Raises ``UnknownSimModel`` for a model that does not exist, ``SimFault`` for an
    injected error. ``sleep=False`` skips the latency (an async caller awaits it itself).
    """
    name, opts = resolve(spec, base)
    reply = reply_function(name)
    msgs = plain_messages(messages)
    digest = prompt_digest(opts.seed, name, msgs)
    with _counters.lock:
        now = _counters.in_flight.get(name, 0) + 1
        _counters.in_flight[name] = now
        _counters.peak[name] = max(_counters.peak.get(name, 0), now)
    try:
        if sleep and opts.latency_ms > 0:
            time.sleep(opts.latency_ms / 1000.0)
        fault = _draw_fault(opts, name, digest)
        if fault is not None and fault != "malformed":
            with _counters.lock:
                kinds = _counters.faults.setdefault(name, {})
                kinds[fault] = kinds.get(fault, 0) + 1
            raise SimFault(fault, name, opts.retry_after if fault == "rate_limit" else 0.0)
        rng = random.Random(digest)
        text = reply(msgs, rng) if opts.mode is None else reply(msgs, rng, mode=opts.mode)
        if not isinstance(text, str):
            raise TypeError(f"{__name__}.{name}.reply returned {type(text).__name__}, not str")
        if fault == "malformed":
            text = malform(text, random.Random(digest + b"malformed"))
        with _counters.lock:
            _counters.served[name] = _counters.served.get(name, 0) + 1
            if fault:
                kinds = _counters.faults.setdefault(name, {})
                kinds[fault] = kinds.get(fault, 0) + 1
    finally:
        with _counters.lock:
            _counters.in_flight[name] = max(0, _counters.in_flight.get(name, 0) - 1)
    prompt_chars = "".join(m["content"] for m in msgs)
    return SimReply(text, estimate_tokens(prompt_chars) + 3 * len(msgs), estimate_tokens(text),
                    name, malformed=fault == "malformed")


_registered = threading.Lock()
_done = False


def register() -> None:
    """Register ``gepa-sim`` with litellm (handler and nominal prices); idempotent, thread-safe."""
    global _done
    if _done:
        return
    with _registered:
        if _done:
            return
        from gepa_trace.lm.sim.provider import install

        install()
        _done = True


def is_sim_model(model: str) -> bool:
    return model.startswith(PREFIX)


__all__ = [
    "FAULT_KINDS",
    "MODELS",
    "MODES",
    "PREFIX",
    "PRICE_PER_TOKEN",
    "PROVIDER",
    "SimFault",
    "SimOptions",
    "SimReply",
    "UnknownSimModel",
    "call_counts",
    "check_model",
    "estimate_tokens",
    "fault_counts",
    "generate",
    "is_sim_model",
    "malform",
    "parse_faults",
    "peak_in_flight",
    "plain_messages",
    "register",
    "reply_function",
    "reset_call_counts",
    "resolve",
    "split_model",
]
