"""``LM``: the one door to LLMs, over litellm.

One ``LM`` is one model with its own concurrency limit, retries, accounting and an
optional ``Budget`` shared with the rest of the run::

    lm = LM("openai/gpt-4.1-mini", budget=budget, max_concurrency=8)
    c = lm.complete([{"role": "user", "content": "Hi"}], temperature=0)
    c.text, c.prompt_tokens, c.cost_usd, c.price_known, c.attempts
    lm("Hi")                       # -> str: an LM is a reflection LM
    reply, block = lm.complete_fenced("... answer in a ``` block")

A logical call (``complete``) is: wait for a free slot of this LM's semaphore, reserve
one call from the budget (``BudgetExhausted`` if spent; nothing is sent), then send, retrying
transient failures (429, 5xx, timeouts, broken connections) with exponential backoff and
jitter, never sooner than a server's Retry-After. Retries are attempts of the same
logical call: the budget counts one call. Errors that retrying cannot fix (auth or a
missing API key, permission, bad request, unknown model: ``lm.retry.error_kind``) raise
``LMError`` at once, naming the model and the cause; so does the last transient failure
once ``max_retries`` retries are used up. The ``LMError`` is raised from the provider's
exception, so ``error_kind(err.__cause__)`` tells the cause to code that needs it.

``lm.probe()`` is the preflight's question "does this model answer at all?": one tiny
call, ONE attempt, a short timeout, so a dead endpoint or a bad key fails in seconds.

The semaphore belongs to the LM object: code that shares one LM (the optimizer's
workers, every ``LiteLLMChatModel(lm=...)``) shares its limit; two LM objects for the
same model do not. A slot is held through the backoff pauses of its call, so a
rate-limited provider is not hit harder while it recovers.

Dollars come from litellm's cost map. A model without a known price costs 0 there, its
Completions say ``price_known=False``, and it is logged once per model: we never guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from gepa_trace.errors import ConfigError, LMError
from gepa_trace.lm.budget import Budget
from gepa_trace.lm.fenced import extract_fenced
from gepa_trace.lm.retry import (
    RETRYABLE_KINDS,
    backoff_s,
    connection_refused,
    error_kind,
    retry_after_s,
    status_of,
)

log = logging.getLogger("gepa_trace.lm")

Messages = "str | Sequence[Mapping[str, Any]]"

FENCE_REMINDER = ("Your reply had no fenced block. Answer again, complete, with the answer "
                  "inside a fenced block that starts with ``` and ends with ```.")


@dataclass(frozen=True)
class Completion:
    """One finished logical call.

    ``latency_s`` runs from the first attempt's send to the final reply (retries and
    their pauses included, waiting for a slot excluded). ``cost_usd`` is 0 when
    ``price_known`` is False.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    price_known: bool
    latency_s: float
    model: str
    attempts: int
    finish_reason: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Usage:
    """Running totals of one LM (``LM.usage()``): successful calls, failures, spend."""

    calls: int = 0
    failed_calls: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unknown_price_calls: int = 0
    latency_s: float = 0.0

    @property
    def retries(self) -> int:
        return self.attempts - self.calls - self.failed_calls

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_module_lock = threading.Lock()
_litellm_module: Any = None
_warned_unpriced: set[str] = set()


def _litellm() -> Any:
    """litellm, imported on first use with its price-list download and console noise off."""
    global _litellm_module
    if _litellm_module is None:
        import os

        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        with _module_lock:
            import litellm

            # litellm prints "Provider List: ..." banners on errors; we report errors ourselves.
            litellm.suppress_debug_info = True
            _litellm_module = litellm
    return _litellm_module


def close_idle_main_loop() -> None:
    """Close the main thread's event loop if nothing runs it; for a process about to exit.

    litellm's service logger asks asyncio for the main thread's loop on a blocking call,
    which makes one that nobody closes. litellm's own exit handler then replaces it
    unclosed, and collected at interpreter exit, after its sockets, it printed a traceback
    under the CLI's one-line errors.
    """
    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore", DeprecationWarning)
        loop = asyncio.get_event_loop_policy().get_event_loop()
        if not loop.is_running() and not loop.is_closed():
            loop.close()


def as_messages(messages: Any) -> list[dict[str, Any]]:
    """A str becomes one user message; a list of {"role", "content"} dicts is copied."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out = []
    for m in messages:
        if not isinstance(m, Mapping) or "role" not in m:
            raise ConfigError("messages must be a str or a list of {'role', 'content'} dicts, "
                              f"got an item {m!r}")
        out.append(dict(m))
    if not out:
        raise ConfigError("messages is empty")
    return out


class LM:
    """One model behind litellm, with retries, a concurrency limit, accounting and a budget.

    ``model`` is a litellm model string (``openai/gpt-4.1-mini``, ``ollama/qwen3:8b``,
    ``hosted_vllm/...`` with ``api_base``, ``gepa-sim/task`` for the offline simulated
    provider). ``api_key`` defaults to the provider's usual environment variable (litellm
    reads it). ``default_params`` (temperature, max_tokens, ...) go with every call;
    ``complete(**params)`` overrides them. ``role`` labels this LM's calls in the budget.
    ``backoff_s`` / ``backoff_max_s`` shape the pauses between attempts.
    """

    def __init__(self, model: str, *, api_base: str | None = None, api_key: str | None = None,
                 max_concurrency: int = 8, max_retries: int = 5, timeout: float = 60.0,
                 budget: Budget | None = None, role: str = "task", backoff_s: float = 0.5,
                 backoff_max_s: float = 20.0, **default_params: Any):
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"LM model must be a non-empty litellm model string, got {model!r}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ConfigError(f"LM max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"LM max_retries must be an int >= 0, got {max_retries!r}")
        if not timeout or timeout <= 0:
            raise ConfigError(f"LM timeout must be > 0 seconds, got {timeout!r}")
        if backoff_s < 0 or backoff_max_s < 0:
            raise ConfigError("LM backoff_s and backoff_max_s must be >= 0")
        self.model = model
        self.api_base = api_base
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = float(timeout)
        self.budget = budget
        self.role = role
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.default_params = dict(default_params)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._lock = threading.Lock()
        self._usage = Usage()
        self._in_flight = 0
        self._peak_in_flight = 0
        self._executor: ThreadPoolExecutor | None = None
        self._jitter = random.Random()
        from gepa_trace.lm import sim

        self._sim_model = sim.check_model(model) if sim.is_sim_model(model) else None

    def __repr__(self) -> str:
        return f"LM({self.model!r}, role={self.role!r}, max_concurrency={self.max_concurrency})"

    # An LM is a shared door (its slots, totals and budget are the point): copies share it.
    def __copy__(self) -> LM:
        return self

    def __deepcopy__(self, memo: dict) -> LM:
        return self

    # ----------------------------------------------------------------- public calls

    def __call__(self, prompt: str) -> str:
        """The reply's text: with this an LM is a reflection LM (``Callable[[str], str]``)."""
        return self.complete(prompt).text

    def complete(self, messages: Any, **params: Any) -> Completion:
        """Send one logical call and return its Completion (see the module docstring)."""
        msgs = as_messages(messages)
        with self._slots:
            self._enter()
            try:
                return self._call(msgs, {**self.default_params, **params})
            finally:
                self._leave()

    async def acomplete(self, messages: Any, **params: Any) -> Completion:
        """``complete`` for asyncio code: runs on this LM's worker threads, so it shares
        the same concurrency limit, budget and totals as the synchronous calls."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_concurrency,
                                                    thread_name_prefix="gepa-lm")
            executor = self._executor
        return await loop.run_in_executor(executor, lambda: self.complete(messages, **params))

    def complete_fenced(self, messages: Any, **params: Any) -> tuple[str, str | None]:
        """Ask for an answer in a ``` block: (reply text, block content or None).

        When the reply has no usable block, ONE corrective follow-up is sent (the
        conversation so far plus a message saying the block was missing); if that reply
        has none either, the block is None. Both calls count in the budget.
        """
        msgs = as_messages(messages)
        first = self.complete(msgs, **params)
        block = extract_fenced(first.text)
        if block is not None:
            return first.text, block
        log.info("%s: reply had no fenced block; asking once more", self.model)
        retry = msgs + [{"role": "assistant", "content": first.text},
                        {"role": "user", "content": FENCE_REMINDER}]
        second = self.complete(retry, **params)
        return second.text, extract_fenced(second.text)

    def probe(self, timeout: float = 10.0) -> Completion:
        """One tiny call, sent once (no retries) with at most ``timeout`` seconds to answer.

        Raises ``LMError`` naming the cause (unknown model, auth or missing key,
        connection refused, ...) at once. The call counts in the budget like any other.
        """
        msgs = as_messages("Reply with the single word OK.")
        with self._slots:
            self._enter()
            try:
                return self._call(msgs, {**self.default_params, "max_tokens": 16},
                                  max_retries=0, timeout=min(self.timeout, timeout))
            finally:
                self._leave()

    def usage(self) -> Usage:
        """A snapshot of this LM's running totals."""
        with self._lock:
            return replace(self._usage)

    def peak_in_flight(self) -> int:
        """The most calls of this LM that were ever in flight together."""
        with self._lock:
            return self._peak_in_flight

    def close(self) -> None:
        """Stop the worker threads of ``acomplete`` (synchronous calls need nothing)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    # ----------------------------------------------------------------- internals

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _request(self, msgs: list[dict[str, Any]], params: dict[str, Any],
                 timeout: float) -> dict[str, Any]:
        request = {**params, "model": self.model, "messages": msgs, "timeout": timeout,
                   # We retry ourselves; litellm and the OpenAI SDK must not retry underneath.
                   "max_retries": 0, "num_retries": 0}
        if self.api_base:
            request["api_base"] = self.api_base
        if self.api_key:
            request["api_key"] = self.api_key
        return request

    def _call(self, msgs: list[dict[str, Any]], params: dict[str, Any], *,
              max_retries: int | None = None, timeout: float | None = None) -> Completion:
        retries = self.max_retries if max_retries is None else max_retries
        litellm = _litellm()
        if self._sim_model is not None:
            from gepa_trace.lm import sim

            sim.register()
        if self.budget is not None:
            self.budget.start_llm_call(self.role)  # raises BudgetExhausted: nothing is sent
        request = self._request(msgs, params, self.timeout if timeout is None else timeout)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = litellm.completion(**request)
                break
            except Exception as exc:  # every failure is classified below, none swallowed
                kind = error_kind(exc)
                if kind not in RETRYABLE_KINDS or attempt > retries:
                    self._failed(attempt)
                    if self.budget is not None:  # nothing spent; its hold ends
                        self.budget.record_llm_call()
                    raise self._error(exc, attempt, kind) from exc
                pause = backoff_s(attempt, self.backoff_s, self.backoff_max_s,
                                  retry_after_s(exc), self._jitter)
                log.info("%s: %s on attempt %d; retrying in %.2fs", self.model,
                         type(exc).__name__, attempt, pause)
                time.sleep(pause)
        return self._account(response, started, attempt)

    def _error(self, exc: Exception, attempts: int, kind: str) -> LMError:
        status = status_of(exc)
        what = type(exc).__name__ + (f" (HTTP {status})" if status else "")
        # litellm's messages repeat the class name and may run over several lines; the
        # CLI prints an LMError as one line.
        detail = " ".join(str(exc).replace("litellm.", "", 1).split())
        while detail.startswith(type(exc).__name__ + ": "):
            detail = detail[len(type(exc).__name__) + 2:]
        if len(detail) > 300:
            detail = detail[:297] + "..."
        at = f" (endpoint {self.api_base})" if self.api_base else ""
        if kind == "auth" and status != 401:
            return LMError(f"LLM call to {self.model} failed: no API key{at}: {detail} (set the "
                           "provider's key variable, e.g. OPENAI_API_KEY, or pass api_key)")
        if kind == "connection" and connection_refused(exc):
            return LMError(f"LLM call to {self.model} failed: connection refused{at}: nothing "
                           "listens there; is the server running?")
        cause = {"auth": "authentication failed", "permission": "permission denied",
                 "not_found": "unknown model or endpoint",
                 "bad_request": "bad request"}.get(kind, "not a transient error")
        if kind in RETRYABLE_KINDS:
            return LMError(f"LLM call to {self.model} failed after {attempts} "
                           f"attempt{'s' if attempts != 1 else ''}: {what}: {detail}{at}")
        return LMError(f"LLM call to {self.model} failed with {what}, which retrying cannot "
                       f"fix ({cause}): {detail}{at}")

    def _failed(self, attempts: int) -> None:
        with self._lock:
            u = self._usage
            self._usage = replace(u, failed_calls=u.failed_calls + 1,
                                  attempts=u.attempts + attempts)

    def _cost(self, response: Any, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Dollars per litellm's cost map, or None when the model has no known price."""
        # litellm already priced the response while logging it; a positive figure is a
        # known price. None or 0 may mean "not in the map", so those are looked up again.
        hidden = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
        if isinstance(hidden, (int, float)) and hidden > 0:
            return float(hidden)
        litellm = _litellm()
        model = self.model.split("?", 1)[0] if self._sim_model else self.model
        try:
            return float(litellm.completion_cost(completion_response=response, model=model))
        except Exception:  # noqa: BLE001, S110 - litellm raises for a model not in its map
            pass
        return price(model, prompt_tokens, completion_tokens)

    def _account(self, response: Any, started: float, attempts: int) -> Completion:
        latency = time.monotonic() - started
        choice = response.choices[0]
        text = getattr(choice.message, "content", None) or ""
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = self._cost(response, prompt_tokens, completion_tokens)
        price_known = cost is not None
        if not price_known:
            with _module_lock:  # the set is shared by every LM of the process
                first = self.model not in _warned_unpriced
                _warned_unpriced.add(self.model)
            if first:
                log.warning("no price known for %s: its calls count as $0 and are flagged "
                            "price_known=False (a dollar budget cannot see them)", self.model)
        completion = Completion(
            text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            cost_usd=cost or 0.0, price_known=price_known, latency_s=latency,
            model=self.model, attempts=attempts,
            finish_reason=getattr(choice, "finish_reason", None))
        with self._lock:
            u = self._usage
            self._usage = Usage(
                calls=u.calls + 1, failed_calls=u.failed_calls, attempts=u.attempts + attempts,
                prompt_tokens=u.prompt_tokens + prompt_tokens,
                completion_tokens=u.completion_tokens + completion_tokens,
                cost_usd=u.cost_usd + completion.cost_usd,
                unknown_price_calls=u.unknown_price_calls + (0 if price_known else 1),
                latency_s=u.latency_s + latency)
        if self.budget is not None:
            self.budget.record_llm_call(completion.total_tokens, completion.cost_usd)
        return completion


def price(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Dollars for these token counts per litellm's cost map, or None when unknown."""
    from gepa_trace.lm import sim

    litellm = _litellm()
    if sim.is_sim_model(model):
        sim.register()
        model = model.split("?", 1)[0]
    try:
        cost_in, cost_out = litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens,
                                                   completion_tokens=completion_tokens)
        return float(cost_in) + float(cost_out)
    except Exception:  # noqa: BLE001 - a model missing from the map
        return None
