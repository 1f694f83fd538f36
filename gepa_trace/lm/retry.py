"""Which LLM errors are worth retrying, and how long to wait before the next attempt.

``error_kind`` names the cause of a failed call; ``is_retryable`` is true for the
transient kinds only:

- retried: ``rate_limit`` (429), ``timeout`` (408, client-side timeouts), ``server``
  (5xx, 529 "overloaded", 409, 425) and ``connection`` (refused, reset, DNS);
- never retried, because they fail the same way every time: ``auth`` (401, and a
  missing API key, which litellm reports as HTTP 500 "Missing credentials" or as an
  ``openai.OpenAIError`` without a status), ``permission`` (403), ``not_found``
  (404: an unknown model or route; litellm's "LLM Provider NOT provided"), ``bad_request`` (400, 422: unknown provider,
  context window exceeded, bad parameters) and ``other`` (a bug is not transient).
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
#: A server asking for a longer pause than this is not waited for longer than this.
MAX_RETRY_AFTER_S = 120.0
RETRYABLE_KINDS = frozenset({"rate_limit", "timeout", "server", "connection"})

# What litellm and the OpenAI SDK say when no key is configured; litellm wraps it in an
# InternalServerError (HTTP 500), which would otherwise be retried for a minute.
_MISSING_KEY = re.compile(r"missing credentials|api_key client option must be set|"
                          r"missing \w+ api key|no api key|api key not found", re.IGNORECASE)


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and the ones it was raised from (litellm wraps the SDK's errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_missing_key(exc: BaseException) -> bool:
    try:
        import openai
    except ImportError:  # pragma: no cover - openai comes with litellm
        openai = None  # type: ignore[assignment]
    for link in _chain(exc):
        if _MISSING_KEY.search(str(link)):
            return True
        # The SDK's bare OpenAIError (not an APIError) is raised only by the client's
        # own checks before sending, in practice the missing key.
        if openai is not None and type(link) is openai.OpenAIError:
            return True
    return False


def error_kind(exc: BaseException) -> str:
    """The cause of a failed LLM call, as one word (see the module docstring)."""
    if _is_missing_key(exc):
        return "auth"
    if "LLM Provider NOT provided" in str(exc):  # litellm's 400 for a model it cannot place
        return "not_found"
    transport = _transport_kind(exc)
    if transport is not None:
        return transport
    status = status_of(exc)
    if status is None:
        return "other"
    if status == 401:
        return "auth"
    if status == 403:
        return "permission"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limit"
    if status == 408:
        return "timeout"
    if status in RETRYABLE_STATUS or status >= 500:
        return "server"
    return "bad_request"


def _transport_kind(exc: BaseException) -> str | None:
    """"timeout" or "connection" when the request never got an HTTP answer."""
    try:
        import openai

        timeouts: tuple[type, ...] = (openai.APITimeoutError,)
        connections: tuple[type, ...] = (openai.APIConnectionError,)
    except ImportError:  # pragma: no cover - openai comes with litellm
        timeouts, connections = (), ()
    try:
        import httpx

        timeouts += (httpx.TimeoutException,)
        connections += (httpx.NetworkError,)
    except ImportError:  # pragma: no cover
        pass
    for link in _chain(exc):
        # Timeouts first: the SDK's APITimeoutError subclasses APIConnectionError.
        if isinstance(link, timeouts + (TimeoutError,)):
            return "timeout"
        if isinstance(link, connections + (ConnectionError,)):
            return "connection"
    return None


def is_retryable(exc: BaseException) -> bool:
    """True for transient failures: rate limits, 5xx, timeouts, broken connections."""
    return error_kind(exc) in RETRYABLE_KINDS


def connection_refused(exc: BaseException) -> bool:
    """True when nothing listens at the endpoint (no server, wrong port)."""
    return any(isinstance(link, ConnectionRefusedError) for link in _chain(exc))


def _headers(exc: BaseException) -> list[Mapping[str, Any]]:
    found = []
    for source in (getattr(exc, "headers", None), getattr(exc, "litellm_response_headers", None),
                   getattr(getattr(exc, "response", None), "headers", None)):
        if source:
            try:
                found.append({str(k).lower(): v for k, v in dict(source).items()})
            except (TypeError, ValueError):
                continue
    return found


def retry_after_s(exc: BaseException, now: float | None = None) -> float | None:
    """The pause the server asked for (``retry-after-ms``, ``retry-after`` in seconds or as
    an HTTP date), capped at MAX_RETRY_AFTER_S; None when it did not say."""
    for headers in _headers(exc):
        raw = headers.get("retry-after-ms")
        if raw is not None:
            try:
                return min(MAX_RETRY_AFTER_S, max(0.0, float(raw) / 1000.0))
            except ValueError:
                pass
        raw = headers.get("retry-after")
        if raw is None:
            continue
        try:
            return min(MAX_RETRY_AFTER_S, max(0.0, float(raw)))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(str(raw)).timestamp()
        except (TypeError, ValueError):
            continue
        return min(MAX_RETRY_AFTER_S, max(0.0, when - (time.time() if now is None else now)))
    return None


def backoff_s(attempt: int, base_s: float, max_s: float, asked_s: float | None,
              rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential (base * 2^(attempt-1), capped at ``max_s``) with "equal jitter" (half
    fixed, half random) so many workers hit by the same 429 do not come back together.
    A server's Retry-After is a floor: we never come back earlier than it asked.
    """
    rng = rng or random
    ceiling = min(max_s, base_s * (2 ** (attempt - 1)))
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    if asked_s is not None:
        delay = max(delay, asked_s + rng.uniform(0, min(asked_s, base_s) * 0.1))
    return delay
