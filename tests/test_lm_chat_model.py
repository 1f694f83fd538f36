"""LiteLLMChatModel: a LangChain chat model over LM, its metadata and its cache key."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from gepa_trace.errors import BudgetExhausted
from gepa_trace.lm import LM, Budget, LiteLLMChatModel, extract_fenced, sim

MESSAGES = [SystemMessage("You are terse."), HumanMessage("Name a colour.")]


@pytest.fixture(autouse=True)
def fresh_sim_counters():
    sim.reset_call_counts()
    yield
    sim.reset_call_counts()


def test_chat_model_reply_carries_usage_and_model_name():
    chat = LiteLLMChatModel(model="gepa-sim/echo", temperature=0)
    reply = chat.invoke(MESSAGES)
    assert isinstance(reply, AIMessage)
    assert extract_fenced(reply.content) == "Name a colour."
    direct = sim.generate("echo", [{"role": "system", "content": "You are terse."},
                                   {"role": "user", "content": "Name a colour."}])
    assert reply.content == direct.text  # roles and text reached the model unchanged
    assert reply.usage_metadata == {"input_tokens": direct.prompt_tokens,
                                    "output_tokens": direct.completion_tokens,
                                    "total_tokens": direct.prompt_tokens + direct.completion_tokens}
    assert reply.response_metadata["model_name"] == "gepa-sim/echo"
    assert reply.response_metadata["price_known"] is True
    assert reply.response_metadata["cost_usd"] > 0


def test_in_memory_cache_serves_the_second_identical_call():
    chat = LiteLLMChatModel(model="gepa-sim/echo", temperature=0, cache=InMemoryCache())
    first = chat.invoke(MESSAGES)
    assert sim.call_counts() == {"echo": 1}
    second = chat.invoke(MESSAGES)
    assert second.content == first.content
    assert sim.call_counts() == {"echo": 1}  # served from the cache, not the model
    chat.invoke([HumanMessage("Another question.")])
    assert sim.call_counts() == {"echo": 2}


def test_cache_key_reflects_model_and_parameters():
    cache = InMemoryCache()
    a = LiteLLMChatModel(model="gepa-sim/echo", temperature=0, cache=cache)
    b = LiteLLMChatModel(model="gepa-sim/echo", temperature=0.7, cache=cache)
    c = LiteLLMChatModel(model="gepa-sim/echo", temperature=0, cache=cache,
                         model_kwargs={"seed": 1})
    keys = {m._get_llm_string() for m in (a, b, c)}
    assert len(keys) == 3
    assert "gepa-sim/echo" in a._get_llm_string()
    # The endpoint, key and limits do not change the answer, so not the key either.
    d = LiteLLMChatModel(model="gepa-sim/echo", temperature=0, api_base="http://x",
                         api_key="secret", max_concurrency=2, cache=cache)
    assert d._get_llm_string() == a._get_llm_string()
    assert "secret" not in d._get_llm_string()
    for model in (a, b, c):
        model.invoke(MESSAGES)
    assert sim.call_counts() == {"echo": 3}


def test_shared_lm_shares_limits_budget_and_totals():
    budget = Budget(max_llm_calls=3)
    lm = LM("gepa-sim/echo", budget=budget, max_concurrency=2, temperature=0.2)
    planner = LiteLLMChatModel(lm=lm)
    answerer = LiteLLMChatModel(lm=lm, max_tokens=50)
    assert planner.model == "gepa-sim/echo"
    assert planner._identifying_params == {"model": "gepa-sim/echo", "temperature": 0.2}
    assert answerer._identifying_params["max_tokens"] == 50
    planner.invoke("one")
    answerer.invoke("two")
    planner.invoke("three")
    with pytest.raises(BudgetExhausted):
        answerer.invoke("four")
    assert lm.usage().calls == 3 and budget.spent().llm_calls == 3
    with pytest.raises(ValueError, match="differs from its lm's model"):
        LiteLLMChatModel(model="gepa-sim/task", lm=lm)
    with pytest.raises(ValueError, match="needs model="):
        LiteLLMChatModel()


def test_async_invoke_and_stream_work():
    chat = LiteLLMChatModel(model="gepa-sim/echo")
    reply = asyncio.run(chat.ainvoke("async question"))
    assert extract_fenced(reply.content) == "async question"
    streamed = "".join(chunk.content for chunk in chat.stream("streamed question"))
    assert extract_fenced(streamed) == "streamed question"
    chat.lm.close()
