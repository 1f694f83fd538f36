"""LM: retries under injected faults, the budget under concurrency, the concurrency limit,
accounting, fenced answers with one corrective retry. All offline, on gepa-sim/echo."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading

import pytest

from gepa_trace.errors import BudgetExhausted, ConfigError, LMError
from gepa_trace.lm import LM, Budget, extract_fenced, sim
from gepa_trace.lm.client import FENCE_REMINDER

FAST = {"backoff_s": 0.001, "backoff_max_s": 0.01}


@pytest.fixture(autouse=True)
def fresh_sim_counters():
    sim.reset_call_counts()
    yield
    sim.reset_call_counts()


def test_injected_faults_are_retried_until_the_call_succeeds():
    lm = LM("gepa-sim/echo?rate_limit=1&max_faults=2&retry_after=0.001", **FAST)
    c = lm.complete("hello")
    assert c.attempts == 3
    assert extract_fenced(c.text) == "hello"
    assert sim.fault_counts() == {"echo": {"rate_limit": 2}}
    assert sim.call_counts() == {"echo": 1}
    u = lm.usage()
    assert (u.calls, u.failed_calls, u.attempts, u.retries) == (1, 0, 3, 2)


def test_every_transient_fault_kind_is_retried_and_attempts_add_up():
    lm = LM("gepa-sim/echo?rate_limit=0.3&timeout=0.2&server_error=0.2&max_faults=3"
            "&retry_after=0.001", max_retries=5, **FAST)
    completions = [lm.complete(f"question {i}") for i in range(40)]
    faults = sim.fault_counts()["echo"]
    assert set(faults) == {"rate_limit", "timeout", "server_error"}
    assert sum(c.attempts for c in completions) - len(completions) == sum(faults.values())
    assert sim.call_counts() == {"echo": 40}
    assert all(extract_fenced(c.text) == f"question {i}" for i, c in enumerate(completions))


def test_retries_give_up_with_lmerror_naming_the_model():
    lm = LM("gepa-sim/echo?timeout=1", max_retries=2, **FAST)
    with pytest.raises(LMError, match=r"gepa-sim/echo\?timeout=1 failed after 3 attempts.*Timeout"):
        lm.complete("hello")
    assert sim.fault_counts() == {"echo": {"timeout": 3}}
    assert sim.call_counts() == {}
    u = lm.usage()
    assert (u.calls, u.failed_calls, u.attempts) == (0, 1, 3)


def test_non_retryable_errors_raise_lmerror_at_once():
    # litellm knows no provider "nosuchprovider": a bad request, the same every time.
    lm = LM("nosuchprovider/some-model", max_retries=5, **FAST)
    with pytest.raises(LMError, match="nosuchprovider/some-model failed with BadRequestError"):
        lm.complete("hello")
    assert lm.usage().attempts == 1


def test_unknown_sim_model_and_bad_options_are_clear_config_errors():
    with pytest.raises(ConfigError, match="gepa-sim/nope is not a simulated model.*gepa-sim/task"):
        LM("gepa-sim/nope")
    with pytest.raises(ConfigError, match="unknown simulated-model option 'bogus'"):
        LM("gepa-sim/echo?bogus=1")
    with pytest.raises(ConfigError, match="sum to at most 1"):
        LM("gepa-sim/echo?rate_limit=0.8&timeout=0.5")


def test_budget_stops_calls_exactly_at_its_limit_under_concurrency():
    budget = Budget(max_llm_calls=50)
    limit = 4
    # Faults make some calls retry: a retry must not count as a new budget call.
    lm = LM("gepa-sim/echo?latency_ms=10&rate_limit=0.2&max_faults=1&retry_after=0.001",
            budget=budget, max_concurrency=limit, **FAST)
    completions, stopped, errors = [], [], []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker(w: int) -> None:
        start.wait()
        for i in range(100):
            try:
                c = lm.complete(f"worker {w} call {i}")
            except BudgetExhausted:
                with lock:
                    stopped.append(w)
                return
            except Exception as exc:  # noqa: BLE001 - collected: a thread's failure fails the test
                with lock:
                    errors.append(exc)
                return
            with lock:
                completions.append(c)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(stopped) == list(range(16))
    assert len(completions) == 50
    assert sim.call_counts() == {"echo": 50}
    assert sum(sim.fault_counts()["echo"].values()) > 0  # retries did happen
    assert sum(c.attempts for c in completions) > 50

    # The concurrency limit held, and was actually reached (else this proves nothing).
    assert sim.peak_in_flight()["echo"] <= limit
    assert lm.peak_in_flight() <= limit
    assert sim.peak_in_flight()["echo"] >= 2

    # Accounting: the LM's totals and the budget's are the sums of the Completions.
    spent, u = budget.spent(), lm.usage()
    assert spent.llm_calls == 50 and spent.llm_calls_by_role == {"task": 50}
    assert u.calls == 50 and u.failed_calls == 0
    assert u.attempts == sum(c.attempts for c in completions)
    assert u.prompt_tokens == sum(c.prompt_tokens for c in completions)
    assert u.completion_tokens == sum(c.completion_tokens for c in completions)
    assert spent.tokens == sum(c.total_tokens for c in completions)
    assert u.cost_usd == pytest.approx(sum(c.cost_usd for c in completions))
    assert spent.cost_usd == pytest.approx(u.cost_usd)
    assert u.unknown_price_calls == 0


def test_cost_budget_stops_the_call_that_would_pass_it():
    lm = LM("gepa-sim/echo", budget=Budget(max_cost_usd=5e-5))
    made, costs = 0, []
    with pytest.raises(BudgetExhausted, match="max_cost_usd"):
        for i in range(100):
            costs.append(lm.complete(f"a prompt of some length, number {i}").cost_usd)
            made += 1
    assert 0 < made < 100
    assert sim.call_counts() == {"echo": made}
    assert lm.usage().cost_usd <= 5e-5 < lm.usage().cost_usd + max(costs)


def test_sim_calls_are_priced_at_the_nominal_rate():
    c = LM("gepa-sim/echo?seed=4").complete("price me")
    assert c.price_known
    expected = c.prompt_tokens * sim.PRICE_PER_TOKEN["input"] \
        + c.completion_tokens * sim.PRICE_PER_TOKEN["output"]
    assert c.cost_usd == pytest.approx(expected)
    assert c.prompt_tokens > 0 and c.completion_tokens > 0


def test_concurrency_limit_holds_for_async_calls():
    lm = LM("gepa-sim/echo?latency_ms=20", max_concurrency=3)

    async def many():
        return await asyncio.gather(*(lm.acomplete(f"async {i}") for i in range(12)))

    try:
        completions = asyncio.run(many())
    finally:
        lm.close()
    assert [extract_fenced(c.text) for c in completions] == [f"async {i}" for i in range(12)]
    assert 2 <= sim.peak_in_flight()["echo"] <= 3
    assert lm.usage().calls == 12


def test_same_prompt_same_reply_whatever_the_order_or_concurrency():
    lm = LM("gepa-sim/echo", max_concurrency=8)
    prompts = [f"prompt {i}" for i in range(20)]
    in_order = {p: lm.complete(p).text for p in prompts}
    replies: dict[str, str] = {}

    def ask(p: str) -> None:
        replies[p] = lm.complete(p).text

    threads = [threading.Thread(target=ask, args=(p,)) for p in reversed(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies == in_order
    other_seed = LM("gepa-sim/echo?seed=99")
    assert any(other_seed.complete(p).text != in_order[p] for p in prompts)


def test_lm_is_a_reflection_lm():
    lm = LM("gepa-sim/echo")
    assert extract_fenced(lm("new prompt please")) == "new prompt please"


def test_complete_fenced_makes_one_corrective_retry():
    lm = LM("gepa-sim/echo")
    reply, block = lm.complete_fenced("Answer. NO FENCE")
    assert block == FENCE_REMINDER  # echo fenced the corrective message
    assert "```" in reply
    assert lm.usage().calls == 2


def test_complete_fenced_gives_up_after_one_retry():
    lm = LM("gepa-sim/echo")
    reply, block = lm.complete_fenced("NEVER FENCE")
    assert block is None and reply.startswith("echo")
    assert lm.usage().calls == 2
    reply, block = lm.complete_fenced("fine")
    assert block == "fine" and lm.usage().calls == 3  # no retry when the block is there


def test_malformed_replies_lose_their_block_and_are_flagged_as_truncated():
    lm = LM("gepa-sim/echo?malformed=1")
    c = lm.complete("a long enough prompt to be cut somewhere in its middle")
    assert "```" not in c.text and c.finish_reason == "length"
    assert extract_fenced(c.text) is None
    _, block = lm.complete_fenced("another prompt")
    assert block is None
    assert sim.call_counts() == {"echo": 3} and sim.fault_counts() == {"echo": {"malformed": 3}}


def test_unknown_prices_count_as_zero_are_flagged_and_logged_once(caplog):
    from gepa_trace.lm.sim.server import serve

    with serve() as server:
        lm = LM("openai/echo", api_base=server.base_url, api_key="unused")
        with caplog.at_level(logging.WARNING, logger="gepa_trace.lm"):
            first, second = lm.complete("one"), lm.complete("two")
    assert not first.price_known and first.cost_usd == 0.0 and second.cost_usd == 0.0
    assert first.prompt_tokens > 0  # tokens are still counted
    assert lm.usage().unknown_price_calls == 2
    warnings = [r for r in caplog.records if "no price known for openai/echo" in r.getMessage()]
    assert len(warnings) == 1


def test_importing_gepa_trace_lm_stays_cheap():
    code = ("import sys, gepa_trace.lm as m; m.Budget; m.extract_fenced; import gepa_trace.lm.sim;"
            "print('litellm' in sys.modules, 'langchain_core' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="max_concurrency"):
        LM("gepa-sim/echo", max_concurrency=0)
    with pytest.raises(ConfigError, match="messages"):
        LM("gepa-sim/echo").complete([])
    with pytest.raises(ConfigError, match="messages"):
        LM("gepa-sim/echo").complete([{"content": "no role"}])


def test_a_failing_sim_behaviour_is_not_retried_and_keeps_its_cause():
    def broken(messages, rng):
        raise IndexError("bug in a behaviour")

    sim._replies["broken"] = broken
    try:
        lm = LM("gepa-sim/broken", **FAST)
        with pytest.raises(LMError, match="gepa-sim/broken failed: IndexError: bug in a behaviour"):
            lm.complete("x")
    finally:
        del sim._replies["broken"]
    assert lm.usage().attempts == 1


def test_copies_of_an_lm_share_it():
    import copy

    lm = LM("gepa-sim/echo")
    assert copy.copy(lm) is lm and copy.deepcopy({"lm": lm})["lm"] is lm
