"""LLM errors that retrying cannot fix fail at once; a dead endpoint fails a probe in seconds.

Every case goes through litellm's real HTTP path to the loopback simulated server (or to
a closed loopback port); nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import socket
import time

import pytest

from gepa_trace.errors import LMError
from gepa_trace.lm import LM
from gepa_trace.lm.retry import error_kind, is_retryable
from gepa_trace.lm.sim.server import serve

FAST = {"backoff_s": 0.001, "backoff_max_s": 0.01}


@pytest.fixture
def server():
    handle = serve(api_key="right-key")
    yield handle
    handle.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_openai_key(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def _failure(lm: LM, call=None) -> LMError:
    with pytest.raises(LMError) as caught:
        (call or (lambda: lm.complete("hi")))()
    return caught.value


def test_a_wrong_api_key_is_not_retried(server):
    lm = LM("openai/task", api_base=server.base_url, api_key="wrong", max_retries=5, **FAST)
    error = _failure(lm)
    assert lm.usage().attempts == 1
    assert error_kind(error.__cause__) == "auth"
    assert "authentication failed" in str(error) and "\n" not in str(error)


def test_an_unknown_model_is_not_retried(server):
    lm = LM("openai/no-such-model", api_base=server.base_url, api_key="right-key",
            max_retries=5, **FAST)
    error = _failure(lm)
    assert lm.usage().attempts == 1
    assert "unknown model" in str(error) and "no-such-model" in str(error)


def test_an_unplaceable_model_name_is_an_unknown_model_not_retried():
    lm = LM("no-provider-model-xyz", max_retries=5, **FAST)
    error = _failure(lm)
    assert lm.usage().attempts == 1
    assert error_kind(error.__cause__) == "not_found"


def test_a_missing_api_key_is_an_auth_error_not_retried(server, no_openai_key):
    # litellm reports it as HTTP 500 "Missing credentials": it used to be retried 6 times.
    lm = LM("openai/task", api_base=server.base_url, max_retries=5, backoff_s=1.0)
    started = time.monotonic()
    error = _failure(lm)
    assert time.monotonic() - started < 5
    assert lm.usage().attempts == 1
    assert error_kind(error.__cause__) == "auth" and not is_retryable(error.__cause__)
    assert "no API key" in str(error) and "OPENAI_API_KEY" in str(error)


def test_connection_refused_is_retried_in_the_loop(closed_port):
    lm = LM("openai/task", api_base=f"http://127.0.0.1:{closed_port}/v1", api_key="k",
            max_retries=2, **FAST)
    error = _failure(lm)
    assert lm.usage().attempts == 3
    assert error_kind(error.__cause__) == "connection"
    assert "connection refused" in str(error)


def test_a_probe_of_a_dead_endpoint_fails_once_and_fast(closed_port):
    lm = LM("openai/task", api_base=f"http://127.0.0.1:{closed_port}/v1", api_key="k",
            max_retries=5, backoff_s=2.0)
    started = time.monotonic()
    error = _failure(lm, lm.probe)
    assert time.monotonic() - started < 5
    assert lm.usage().attempts == 1
    assert "connection refused" in str(error) and str(closed_port) in str(error)


def test_a_probe_of_a_working_model_answers_and_counts_in_the_budget(server):
    from gepa_trace.lm.budget import Budget

    budget = Budget(max_llm_calls=10)
    lm = LM("openai/echo", api_base=server.base_url, api_key="right-key", budget=budget,
            role="judge")
    assert lm.probe().text
    assert budget.spent().llm_calls_by_role == {"judge": 1}
