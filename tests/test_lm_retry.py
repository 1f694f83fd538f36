"""Which errors are retried and how long the pauses are."""

from __future__ import annotations

import email.utils
import random

import httpx
import pytest

from gepa_trace.lm.retry import MAX_RETRY_AFTER_S, backoff_s, is_retryable, retry_after_s


def _status_error(status: int, headers: dict[str, str] | None = None) -> Exception:
    import litellm

    request = httpx.Request("POST", "http://x.invalid")
    response = httpx.Response(status, headers=headers or {}, request=request)
    kinds = {400: litellm.BadRequestError, 401: litellm.AuthenticationError,
             404: litellm.NotFoundError, 429: litellm.RateLimitError,
             500: litellm.InternalServerError, 503: litellm.ServiceUnavailableError}
    return kinds[status](message="boom", model="m", llm_provider="openai", response=response)


@pytest.mark.parametrize("status, retryable", [(400, False), (401, False), (404, False),
                                               (429, True), (500, True), (503, True)])
def test_retryable_errors_are_the_transient_ones(status, retryable):
    assert is_retryable(_status_error(status)) is retryable


def test_timeouts_and_connection_errors_are_retryable():
    import litellm

    assert is_retryable(litellm.Timeout(message="t", model="m", llm_provider="openai"))
    assert is_retryable(litellm.APIConnectionError(message="c", model="m", llm_provider="openai"))
    assert is_retryable(ConnectionResetError())
    assert not is_retryable(ValueError("a bug is not transient"))


def test_retry_after_is_read_in_its_three_forms():
    assert retry_after_s(_status_error(429, {"retry-after-ms": "250"})) == pytest.approx(0.25)
    assert retry_after_s(_status_error(429, {"Retry-After": "2"})) == pytest.approx(2.0)
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_s(_status_error(429, {"Retry-After": date}), now=now) == pytest.approx(30)
    assert retry_after_s(_status_error(429, {"Retry-After": "9999"})) == MAX_RETRY_AFTER_S
    assert retry_after_s(_status_error(429)) is None


def test_backoff_grows_exponentially_and_never_undercuts_retry_after():
    rng = random.Random(1)
    pauses = [backoff_s(a, 1.0, 100.0, None, rng) for a in range(1, 6)]
    for attempt, pause in enumerate(pauses, start=1):
        ceiling = 2 ** (attempt - 1)
        assert ceiling / 2 <= pause <= ceiling
    assert backoff_s(10, 1.0, 4.0, None, rng) <= 4.0
    assert backoff_s(1, 0.01, 1.0, 3.0, rng) >= 3.0
