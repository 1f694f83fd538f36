import json
import time

from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from gepa_trace.replay.cache import HIT_MARKER, ReplayCache
from gepa_trace.store import open_store
from gepa_trace.store.spans import write_spans


def _llm_span(i, system, user, output, params, component="answerer", status="OK"):
    attrs = {"openinference.span.kind": "LLM", "gepa.agent": "qa", "gepa.component": component,
             "llm.input_messages.0.message.role": "system",
             "llm.input_messages.0.message.content": system,
             "llm.input_messages.1.message.role": "user",
             "llm.input_messages.1.message.content": user,
             "llm.output_messages.0.message.role": "assistant",
             "llm.output_messages.0.message.content": output,
             "llm.invocation_parameters": json.dumps(params)}
    now = int(time.time() * 1e9)
    return {"trace_id": f"{i:032x}", "span_id": f"{i:016x}", "parent_span_id": "f" * 16,
            "name": "llm", "start_ns": now, "end_ns": now + 5, "status_code": status,
            "attributes": attrs}


class CountingModel(FakeListChatModel):
    """A real chat model that counts the calls that reach it."""

    calls: int = 0

    def _call(self, *args, **kwargs):
        type(self).calls += 1
        return super()._call(*args, **kwargs)


def test_replay_cache_serves_recorded_calls(store_url):
    store = open_store(store_url)
    model = CountingModel(responses=["fresh answer"])
    params = model._get_invocation_params(stop=None)
    write_spans(store, [_llm_span(1, "Answer briefly.", "Capital of France?", "Paris", params),
                        _llm_span(2, "Answer briefly.", "Broken?", "x", params, status="ERROR")])
    cache = ReplayCache.from_store(store, "qa")
    assert len(cache) == 1, "failed calls are not replayed"
    set_llm_cache(cache)
    try:
        CountingModel.calls = 0
        recorded = model.invoke([SystemMessage("Answer briefly."), HumanMessage("Capital of France?")])
        assert recorded.content == "Paris" and recorded.response_metadata[HIT_MARKER]
        assert CountingModel.calls == 0
        assert cache.hits == {"answerer": 1}
        changed = model.invoke([SystemMessage("Answer in one word."),
                                HumanMessage("Capital of France?")])
        assert changed.content == "fresh answer" and CountingModel.calls == 1
        again = model.invoke([SystemMessage("Answer in one word."),
                              HumanMessage("Capital of France?")])
        assert again.content == "fresh answer" and CountingModel.calls == 1, \
            "a call made during the replay is served the next time"
    finally:
        set_llm_cache(None)


def test_replay_cache_key_includes_generation_parameters(store_url):
    store = open_store(store_url)
    model = CountingModel(responses=["fresh"])
    params = dict(model._get_invocation_params(stop=None), temperature=0.9)
    write_spans(store, [_llm_span(3, "S", "U", "recorded", params)])
    cache = ReplayCache.from_store(store, "qa")
    set_llm_cache(cache)
    try:
        assert model.invoke([SystemMessage("S"), HumanMessage("U")]).content == "fresh"
        assert cache.hit_count() == 0
    finally:
        set_llm_cache(None)


def test_replay_cache_serves_concurrent_lookups(store_url):
    """Rollouts run on threads; CPython 3.11's ast is not thread-safe, so the cache must
    not parse llm_strings concurrently (a SystemError here failed one rollout in CI)."""
    from concurrent.futures import ThreadPoolExecutor

    from langchain_core.load import dumps

    store = open_store(store_url)
    model = CountingModel(responses=["x"])
    write_spans(store, [_llm_span(10 + i, "S", f"U{i}", f"out{i}",
                                  dict(model._get_invocation_params(stop=None), seed=i))
                        for i in range(16)])
    cache = ReplayCache.from_store(store, "qa")

    def lookup(i):
        params = dict(model._get_invocation_params(stop=None), seed=i)
        llm_string = str(sorted(params.items()))
        prompt = dumps([SystemMessage("S"), HumanMessage(f"U{i}")])
        return cache.lookup(prompt, llm_string)[0].text

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lookup, [i % 16 for i in range(800)])) == \
            [f"out{i % 16}" for i in range(800)]


def test_replay_cache_answers_only_calls_inside_its_rollouts(store_url):
    """Live traffic in the same process (or a second optimization) is never answered
    from a run's cache: only calls made inside ``serving()`` are."""
    from langchain_core.globals import get_llm_cache

    store = open_store(store_url)
    model = CountingModel(responses=["live answer"])
    params = model._get_invocation_params(stop=None)
    write_spans(store, [_llm_span(40, "S", "Capital of France?", "Paris", params)])
    cache = ReplayCache.from_store(store, "qa")
    request = [SystemMessage("S"), HumanMessage("Capital of France?")]
    CountingModel.calls = 0
    with cache.serving():
        assert model.invoke(request).content == "Paris"
        assert CountingModel.calls == 0
    assert get_llm_cache() is None, "the dispatcher is gone once the rollout ends"
    assert model.invoke(request).content == "live answer" and CountingModel.calls == 1

    # a rollout on a worker thread while the main thread serves live traffic
    import threading

    inside, outside = threading.Event(), threading.Event()
    seen = {}

    def rollout():
        with cache.serving():
            inside.set()
            seen["rollout"] = model.invoke(request).content
            outside.wait(5)

    worker = threading.Thread(target=rollout)
    worker.start()
    inside.wait(5)
    seen["live"] = model.invoke(request).content
    outside.set()
    worker.join(5)
    assert seen == {"rollout": "Paris", "live": "live answer"}


def test_replay_cache_leaves_the_users_own_cache_in_place(store_url):
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import get_llm_cache

    store = open_store(store_url)
    model = CountingModel(responses=["live answer"])
    params = model._get_invocation_params(stop=None)
    write_spans(store, [_llm_span(41, "S", "U", "recorded", params)])
    cache = ReplayCache.from_store(store, "qa")
    theirs = InMemoryCache()
    set_llm_cache(theirs)
    try:
        with cache.serving():
            assert model.invoke([SystemMessage("S"), HumanMessage("U")]).content == "recorded"
            assert model.invoke([SystemMessage("S"), HumanMessage("other")]).content \
                == "live answer"
        assert get_llm_cache() is theirs
        assert len(theirs._cache) == 0, "a rollout's calls do not fill the user's cache"
    finally:
        set_llm_cache(None)


def test_replay_cache_loads_only_the_traces_of_the_examples_in_use(store_url):
    store = open_store(store_url)
    params = CountingModel(responses=["x"])._get_invocation_params(stop=None)
    write_spans(store, [_llm_span(50 + i, "S", f"U{i}", f"out{i}", params) for i in range(5)])
    wanted = [f"{50:032x}", f"{52:032x}"]
    assert len(ReplayCache.from_store(store, "qa", trace_ids=wanted)) == 2
    assert len(ReplayCache.from_store(store, "qa", trace_ids=[])) == 0
    assert len(ReplayCache.from_store(store, "qa")) >= 5


def test_an_empty_replay_cache_learns_the_calls_of_its_rollouts():
    """A run on a store with no recorded call of a prompt starts with an empty cache;
    what its rollouts send is answered from it the next time."""
    model = CountingModel(responses=["first", "second"])
    cache = ReplayCache()
    request = [SystemMessage("S"), HumanMessage("U")]
    CountingModel.calls = 0
    with cache.serving():
        assert model.invoke(request).content == "first"
    with cache.serving():
        assert model.invoke(request).content == "first"
    assert CountingModel.calls == 1 and cache.hit_count() == 1
