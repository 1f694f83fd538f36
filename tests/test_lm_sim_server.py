"""The loopback OpenAI-compatible server: litellm's real HTTP path, end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from gepa_trace.errors import LMError
from gepa_trace.lm import LM, extract_fenced, sim
from gepa_trace.lm.sim.server import serve

FAST = {"backoff_s": 0.001, "backoff_max_s": 0.01}
PROMPT = [{"role": "system", "content": "You answer questions about a small world."},
          {"role": "user", "content": "Question: Which country is Lyon in?\n"
                                      "Answer with the country in a ``` block."}]


@pytest.fixture(autouse=True)
def fresh_sim_counters():
    sim.reset_call_counts()
    yield
    sim.reset_call_counts()


@pytest.fixture
def server():
    handle = serve()
    yield handle
    handle.close()


def _post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def _available(name: str) -> bool:
    return importlib.util.find_spec(f"gepa_trace.lm.sim.{name}") is not None


@pytest.mark.parametrize("name", sim.MODELS)
def test_loopback_server_answers_like_the_in_process_provider(server, name):
    if not _available(name):
        pytest.skip(f"gepa-sim/{name} has no behaviour module yet")
    local = LM(f"gepa-sim/{name}").complete(PROMPT)
    remote = LM(f"openai/{name}", api_base=server.base_url, api_key="unused").complete(PROMPT)
    assert remote.text == local.text
    assert (remote.prompt_tokens, remote.completion_tokens) == \
        (local.prompt_tokens, local.completion_tokens)
    assert sim.call_counts() == {name: 2}


def test_prefixed_model_names_and_streaming_give_the_same_answer(server):
    import litellm

    plain = LM("openai/echo", api_base=server.base_url, api_key="k").complete(PROMPT).text
    prefixed = LM("openai/gepa-sim/echo", api_base=server.base_url, api_key="k").complete(PROMPT)
    assert prefixed.text == plain
    chunks = litellm.completion(model="openai/echo", api_base=server.base_url, api_key="k",
                                messages=PROMPT, stream=True,
                                stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in chunks:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = getattr(chunk, "usage", None) or usage
    assert text == plain
    assert usage is not None and usage.completion_tokens == sim.estimate_tokens(plain)


def test_server_rate_limit_is_a_429_with_retry_after_that_lm_honours(server):
    status, headers, body = _post(server.base_url + "/chat/completions",
                                  {"model": "echo?rate_limit=1&retry_after=0.3",
                                   "messages": PROMPT})
    assert status == 429 and headers["Retry-After"] == "0.3"
    assert body["error"]["type"] == "rate_limit_error"
    sim.reset_call_counts()

    lm = LM("openai/echo?rate_limit=1&max_faults=1&retry_after=0.3", api_base=server.base_url,
            api_key="k", **FAST)
    started = time.monotonic()
    c = lm.complete(PROMPT)
    waited = time.monotonic() - started
    assert c.attempts == 2
    assert waited >= 0.3  # the backoff alone (0.001 s) would not have waited this long
    assert sim.fault_counts() == {"echo": {"rate_limit": 1}}
    assert sim.call_counts() == {"echo": 1}
    assert extract_fenced(c.text) is not None


def test_server_errors_and_timeouts_are_http_errors_that_lm_retries(server):
    lm = LM("openai/echo?server_error=0.4&timeout=0.4&max_faults=2&retry_after=0",
            api_base=server.base_url, api_key="k", **FAST)
    completions = [lm.complete(f"q{i}") for i in range(15)]
    faults = sim.fault_counts()["echo"]
    assert set(faults) == {"server_error", "timeout"}
    assert sum(c.attempts for c in completions) - 15 == sum(faults.values())
    status, _, _ = _post(server.base_url + "/chat/completions",
                         {"model": "echo?server_error=1", "messages": PROMPT})
    assert status == 500
    status, _, _ = _post(server.base_url + "/chat/completions",
                         {"model": "echo?timeout=1", "messages": PROMPT})
    assert status == 504


def test_auth_and_unknown_model_fail_at_once_with_lmerror():
    with serve(api_key="right") as server:
        wrong = LM("openai/echo", api_base=server.base_url, api_key="wrong", **FAST)
        with pytest.raises(LMError, match=r"openai/echo failed with AuthenticationError \(HTTP 401\)"):
            wrong.complete("hi")
        assert wrong.usage().attempts == 1
        missing = LM("openai/nope", api_base=server.base_url, api_key="right", **FAST)
        with pytest.raises(LMError, match=r"openai/nope failed with NotFoundError \(HTTP 404\)"):
            missing.complete("hi")
        assert missing.usage().attempts == 1
        assert LM("openai/echo", api_base=server.base_url, api_key="right").complete("hi").text
    assert sim.call_counts() == {"echo": 1}


def test_models_route_and_bad_bodies(server):
    with urllib.request.urlopen(server.base_url + "/models", timeout=10) as response:
        listed = json.loads(response.read())
    assert [m["id"] for m in listed["data"]] == list(sim.MODELS)
    status, _, body = _post(server.base_url + "/chat/completions", {"messages": PROMPT})
    assert status == 400 and "invalid request body" in body["error"]["message"]
    status, _, body = _post(server.base_url + "/chat/completions",
                            {"model": "echo?colour=red", "messages": PROMPT})
    assert status == 400 and "colour" in body["error"]["message"]


def test_server_runs_as_a_module_with_its_own_options():
    process = subprocess.Popen(
        [sys.executable, "-m", "gepa_trace.lm.sim.server", "--port", "0", "--seed", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "simulated" in line, process.stderr.read() if process.poll() is not None else line
        base_url = line.split(" at ", 1)[1].split()[0]
        status, _, body = _post(base_url + "/chat/completions",
                                {"model": "echo", "messages": PROMPT})
        assert status == 200
        expected = sim.generate("echo?seed=5", PROMPT).text
        assert body["choices"][0]["message"]["content"] == expected
        assert body["usage"]["total_tokens"] > 0
    finally:
        process.terminate()
        process.wait(timeout=10)
