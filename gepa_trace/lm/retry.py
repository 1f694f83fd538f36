"""Which LLM errors are worth retrying, and how long to wait before the next attempt.

Retryable: rate limits (429), timeouts (408, client-side timeouts), conflicts and early
data (409, 425), server errors (5xx, including 529 "overloaded") and connection
failures. Everything else (authentication, permission, bad request, unknown model,
context window exceeded) fails the same way every time and is not retried.
"""

from __future__ import annotations

import email.utils
import random
import time
from typing import Any, Mapping

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
#: A server asking for a longer pause than this is not waited for longer than this.
MAX_RETRY_AFTER_S = 120.0


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def is_retryable(exc: BaseException) -> bool:
    """True for transient failures: rate limits, 5xx, timeouts, broken connections."""
    try:
        import openai

        # litellm's Timeout and APIConnectionError subclass these.
        if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
            return True
    except ImportError:  # pragma: no cover - openai comes with litellm
        pass
    try:
        import httpx

        if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError)):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    status = status_of(exc)
    return status is not None and (status in RETRYABLE_STATUS or status >= 500)


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
