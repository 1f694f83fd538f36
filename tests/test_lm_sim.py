"""The simulated provider: options, determinism, counters, and the litellm path."""

from __future__ import annotations

import asyncio
import random

import pytest

from gepa_trace.errors import ConfigError
from gepa_trace.lm import sim


@pytest.fixture(autouse=True)
def fresh_sim_counters():
    sim.reset_call_counts()
    yield
    sim.reset_call_counts()


def test_model_string_options_override_the_environment(monkeypatch):
    monkeypatch.setenv("GEPA_SIM_SEED", "7")
    monkeypatch.setenv("GEPA_SIM_LATENCY_MS", "12")
    monkeypatch.setenv("GEPA_SIM_FAULTS", "rate_limit=0.1, timeout=0.05,malformed=0.1")
    name, opts = sim.resolve("gepa-sim/task")
    assert name == "task"
    assert (opts.seed, opts.latency_ms, opts.rate_limit, opts.timeout, opts.malformed) == \
        (7, 12.0, 0.1, 0.05, 0.1)
    name, opts = sim.resolve("gepa-sim/judge?seed=3&latency_ms=0&rate_limit=0.2&max_faults=1")
    assert name == "judge"
    assert (opts.seed, opts.latency_ms, opts.rate_limit, opts.timeout, opts.max_faults) == \
        (3, 0.0, 0.2, 0.05, 1)


@pytest.mark.parametrize("spec, message", [
    ("gepa-sim/echo?colour=red", "unknown simulated-model option 'colour'"),
    ("gepa-sim/echo?seed=abc", "is not a number"),
    ("gepa-sim/echo?rate_limit=2", "must be in 0..1"),
    ("gepa-sim/echo?latency_ms=-1", "must be >= 0"),
])
def test_bad_options_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        sim.resolve(spec)


def test_bad_fault_setting_is_a_config_error(monkeypatch):
    monkeypatch.setenv("GEPA_SIM_FAULTS", "rate_limit")
    with pytest.raises(ConfigError, match="kind=rate"):
        sim.resolve("gepa-sim/echo")


def test_unknown_models_are_refused_by_name():
    for name in ("nope", "server", "provider", "../x", "Echo"):
        with pytest.raises(sim.UnknownSimModel, match="is not a simulated model"):
            sim.generate(f"gepa-sim/{name}", [{"role": "user", "content": "x"}])


def test_reply_rng_depends_on_seed_model_and_messages_only():
    seen: list[int] = []

    def grab(messages, rng: random.Random) -> str:
        seen.append(rng.randrange(1 << 30))
        return "ok"

    sim._replies["grab"] = grab
    try:
        msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
        sim.generate("grab", msgs)
        sim.generate("grab", [{"role": "user", "content": "other"}])
        sim.generate("grab", msgs)
        sim.generate("grab?seed=1", msgs)
        sim.generate("grab?latency_ms=1", msgs)  # latency is not part of the identity
        # Content given as OpenAI parts is the same text.
        sim.generate("grab", [{"role": "system", "content": [{"type": "text", "text": "s"}]},
                              {"role": "user", "content": "u"}])
    finally:
        del sim._replies["grab"]
    assert seen[0] == seen[2] == seen[4] == seen[5]
    assert len({seen[0], seen[1], seen[3]}) == 3


def test_fault_sequences_repeat_after_a_reset():
    def kinds() -> list[str]:
        out = []
        for i in range(30):
            try:
                sim.generate("echo?rate_limit=0.3&timeout=0.2", [{"role": "user", "content": str(i % 5)}])
                out.append("ok")
            except sim.SimFault as fault:
                out.append(fault.kind)
        return out

    first = kinds()
    sim.reset_call_counts()
    assert kinds() == first
    assert {"ok", "rate_limit", "timeout"} <= set(first)


def test_call_counts_count_served_replies_per_model():
    sim.generate("echo", [{"role": "user", "content": "a"}])
    sim.generate("gepa-sim/echo?seed=2", [{"role": "user", "content": "a"}])
    with pytest.raises(sim.SimFault):
        sim.generate("echo?rate_limit=1", [{"role": "user", "content": "b"}])
    assert sim.call_counts() == {"echo": 2}
    assert sim.fault_counts() == {"echo": {"rate_limit": 1}}
    sim.reset_call_counts()
    assert sim.call_counts() == {} and sim.fault_counts() == {}


def test_usage_is_estimated_from_the_text():
    reply = sim.generate("echo", [{"role": "user", "content": "x" * 400}])
    assert 100 <= reply.prompt_tokens <= 110
    assert reply.completion_tokens == sim.estimate_tokens(reply.text)


def test_registered_provider_runs_through_litellm_completion():
    import litellm

    sim.register()
    sim.register()  # idempotent
    assert sum(p["provider"] == "gepa-sim" for p in litellm.custom_provider_map) == 1
    messages = [{"role": "user", "content": "through litellm"}]
    response = litellm.completion(model="gepa-sim/echo", messages=messages)
    direct = sim.generate("echo", messages)
    assert response.choices[0].message.content == direct.text
    assert response.usage.prompt_tokens == direct.prompt_tokens
    assert litellm.completion_cost(completion_response=response, model="gepa-sim/echo") > 0
    with pytest.raises(litellm.RateLimitError) as info:
        litellm.completion(model="gepa-sim/echo?rate_limit=1&retry_after=0.5", messages=messages)
    assert info.value.headers["retry-after"] == "0.5"
    with pytest.raises(litellm.Timeout):
        litellm.completion(model="gepa-sim/echo?timeout=1", messages=messages)
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(model="gepa-sim/nope", messages=messages)


def test_provider_streams_and_serves_async_calls():
    import litellm

    sim.register()
    messages = [{"role": "user", "content": "stream these words"}]
    expected = sim.generate("echo", messages).text
    chunks = litellm.completion(model="gepa-sim/echo", messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected

    async def ask():
        return await litellm.acompletion(model="gepa-sim/echo?latency_ms=1", messages=messages)

    assert asyncio.run(ask()).choices[0].message.content == expected
