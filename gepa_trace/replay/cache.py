"""The replay cache: recorded LLM calls answer identical calls during a replay.

It is a langchain-core ``BaseCache``, and it answers only the rollouts of its own run:
each rollout runs its agent inside ``cache.serving()``. While any rollout is being
served, langchain's global cache is a small dispatcher that sends a call made inside
``serving()`` (in that context: threads and tasks that LangChain starts copy it) to
that run's cache, and every other call to whatever cache was installed before (or
none). So live traffic in the same process, or a second optimization beside the
first, is never answered from a run's cache, and the dispatcher is gone again once
the last rollout ends. Any chat model of the agent that does not opt out
(``cache=False``) asks it first. A call whose model, generation parameters and rendered
messages equal a recorded call (production, or an earlier rollout of this run) is
answered with the recorded output, costs nothing, and is counted as a hit for the
component that made it.

The key is semantic, computed the same way from both sides: from a stored LLM span
(``llm.model_name``, ``llm.invocation_parameters``, ``llm.input_messages.*``) and from
langchain's ``(prompt, llm_string)`` pair. Parameters that do not change the answer
(API keys, base URLs, streaming flags) are left out of it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from sqlalchemy import and_, select

from gepa_trace.collectors.langchain import REPLAY_CACHE_HIT
from gepa_trace.store import SpanRow, Store

_SPANS = SpanRow.__table__

# Parameters that change what a model answers. Everything else (keys, URLs, timeouts,
# streaming, callbacks) is not part of the key.
ANSWER_PARAMS = ("temperature", "max_tokens", "max_completion_tokens", "top_p", "top_k",
                 "stop", "seed", "n", "presence_penalty", "frequency_penalty",
                 "response_format", "tools", "tool_choice", "reasoning_effort")
_ROLES = {"human": "user", "user": "user", "system": "system", "ai": "assistant",
          "assistant": "assistant", "tool": "tool", "function": "tool", "chat": "user"}
# The marker on a served message; the instrumentation copies it onto the LLM span, which
# is how a rollout counts its hits (from its own spans, whatever thread made the call).
HIT_MARKER = REPLAY_CACHE_HIT


def request_key(model: str | None, params: Mapping[str, Any],
                messages: Sequence[tuple[str, str]]) -> str:
    """The key of one LLM request: model, answer-changing parameters, messages."""
    kept = {k: params[k] for k in ANSWER_PARAMS if params.get(k) is not None}
    if kept.get("stop") == []:
        del kept["stop"]
    canonical = json.dumps({"model": (model or "").lower(), "params": kept,
                            "messages": [[_ROLES.get(r, r), c] for r, c in messages]},
                           sort_keys=True, separators=(",", ":"), default=str,
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _model_of(params: Mapping[str, Any]) -> str | None:
    for key in ("model", "model_name", "model_id"):
        if params.get(key):
            return str(params[key])
    return None


def _params_of_span(attributes: Mapping[str, Any]) -> dict[str, Any]:
    raw = attributes.get("llm.invocation_parameters")
    if raw:
        try:
            return json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (ValueError, TypeError):
            return {}
    # GenAI conventions: gen_ai.request.temperature, gen_ai.request.max_tokens, ...
    prefix = "gen_ai.request."
    return {k[len(prefix):]: v for k, v in attributes.items() if k.startswith(prefix)}


def key_and_output_of_span(attributes: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The request key of a stored LLM span (any convention ``llm_view`` reads) and its
    recorded output; the key is None when the span lacks the message text (e.g.
    recorded with capture_content=False)."""
    from gepa_trace.collectors.views import llm_view

    view = llm_view(attributes)
    output = view.output_text if view.output_messages else None
    if not view.input_messages or any(not isinstance(m.get("content"), str) or
                                      (m.get("content") == "" and not m.get("tool_calls"))
                                      for m in view.input_messages):
        return None, output
    params = _params_of_span(attributes)
    model = _model_of(params) or view.model
    key = request_key(model, params, [(m["role"], m["content"]) for m in view.input_messages])
    return key, output


def key_of_span(attributes: Mapping[str, Any]) -> str | None:
    return key_and_output_of_span(attributes)[0]


_literal_lock = threading.Lock()


@functools.lru_cache(maxsize=512)
def _parsed_llm_string(llm_string: str) -> tuple[tuple[str, Any], ...]:
    params: dict[str, Any] = {}
    head, sep, tail = llm_string.partition("---")
    if sep:  # serializable model: json of the model + "---" + sorted call kwargs
        try:
            params.update(json.loads(head).get("kwargs", {}))
        except ValueError:
            pass
        text = tail
    else:
        text = head
    # CPython 3.11's AST validation is not thread-safe ("AST constructor recursion depth
    # mismatch" under concurrent rollouts): parse under a lock, once per llm_string.
    with _literal_lock:
        try:
            params.update(dict(ast.literal_eval(text)))
        except (ValueError, SyntaxError, TypeError):
            pass
    return tuple(params.items())


def _parse_llm_string(llm_string: str) -> dict[str, Any]:
    """langchain's llm_string -> parameters (both its serializable and plain forms)."""
    return dict(_parsed_llm_string(llm_string))


def _messages_of_prompt(prompt: str) -> list[tuple[str, str]] | None:
    try:
        data = json.loads(prompt)
    except ValueError:
        return [("user", prompt)]  # a plain LLM's prompt string
    out = []
    for item in data if isinstance(data, list) else []:
        kwargs = item.get("kwargs", {}) if isinstance(item, dict) else {}
        content = kwargs.get("content")
        if not isinstance(content, str):
            return None  # multimodal content: not replayable by text
        out.append((str(kwargs.get("type", "user")), content))
    return out or None


def key_of_request(prompt: str, llm_string: str) -> str | None:
    messages = _messages_of_prompt(prompt)
    if messages is None:
        return None
    params = _parse_llm_string(llm_string)
    return request_key(_model_of(params), params, messages)


class ReplayCache(BaseCache):
    """Recorded LLM outputs by request key; thread-safe; counts hits per component."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str, str | None]] = {}
        self.hits: Counter[str] = Counter()
        self.misses = 0
        # hits on entries learnt during the run (via update), whose component is only
        # known once the run's own spans are read back: see resolve_components()
        self._unattributed: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: str, output: str, component: str | None = None) -> None:
        with self._lock:
            if key not in self._entries or self._entries[key][1] is None:
                self._entries[key] = (output, component)

    def load_spans(self, rows: Iterable[Any]) -> int:
        """Index stored LLM spans (rows with ``attributes`` JSON and ``component``)."""
        added = 0
        for row in rows:
            key, output = key_and_output_of_span(json.loads(row.attributes))
            if key and output is not None:
                self.add(key, output, row.component)
                added += 1
        return added

    @classmethod
    def from_store(cls, store: Store, agent: str,
                   trace_ids: Iterable[str] | None = None) -> ReplayCache:
        """A cache of the successful recorded LLM calls of ``agent``: those of the traces
        ``trace_ids`` (the examples a run uses), or every one when None. Past nights'
        rollouts are other traces, so a run that names its examples loads none of them."""
        cache = cls()
        where = and_(_SPANS.c.agent == agent, _SPANS.c.span_type == "llm",
                     _SPANS.c.status_code != "ERROR")
        with store.read() as conn:
            if trace_ids is None:
                cache.load_spans(conn.execute(
                    select(_SPANS.c.attributes, _SPANS.c.component).where(where)))
                return cache
            wanted = sorted({t for t in trace_ids if t})
            for start in range(0, len(wanted), 500):  # bound the IN list per query
                chunk = wanted[start:start + 500]
                cache.load_spans(conn.execute(
                    select(_SPANS.c.attributes, _SPANS.c.component)
                    .where(where, _SPANS.c.trace_id.in_(chunk))))
        return cache

    @contextmanager
    def serving(self) -> Iterator[ReplayCache]:
        """Answer the LLM calls made in this context (one rollout) from this cache."""
        _dispatcher_enter()
        token = _serving.set(self)
        try:
            yield self
        finally:
            _serving.reset(token)
            _dispatcher_exit()

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        key = key_of_request(prompt, llm_string)
        with self._lock:
            entry = self._entries.get(key) if key else None
            if entry is None:
                self.misses += 1
                return None
            component = entry[1] or "unknown"
            if entry[1] is None:
                self._unattributed[key] += 1
            else:
                self.hits[component] += 1
        message = AIMessage(content=entry[0], response_metadata={HIT_MARKER: True})
        return [ChatGeneration(message=message)]

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        key = key_of_request(prompt, llm_string)
        if not key or not return_val:
            return
        first: Generation = return_val[0]
        self.add(key, first.text)

    def clear(self, **kwargs: Any) -> None:
        with self._lock:
            self._entries.clear()

    def hit_count(self) -> int:
        with self._lock:
            return sum(self.hits.values()) + sum(self._unattributed.values())

    def counts(self) -> dict[str, Any]:
        """Hits (per component, and on entries learnt during the run) and misses, for
        ``absorb`` in another process's cache."""
        with self._lock:
            return {"hits": dict(self.hits), "unattributed": dict(self._unattributed),
                    "misses": self.misses}

    def absorb(self, counts: Mapping[str, Any]) -> None:
        """Add another cache's ``counts()`` (a worker process's) to this one's."""
        with self._lock:
            self.hits.update(counts.get("hits", {}))
            self._unattributed.update(counts.get("unattributed", {}))
            self.misses += int(counts.get("misses", 0))

    def resolve_components(self, store: Store, run_id: str) -> dict[str, int]:
        """Hits per component, attributing hits on entries learnt during run ``run_id``
        through that run's stored LLM spans (hits still unknown stay "unknown")."""
        with self._lock:
            pending = Counter(self._unattributed)
        found: dict[str, str] = {}
        if pending:
            query = select(_SPANS.c.attributes, _SPANS.c.component).where(and_(
                _SPANS.c.run_id == run_id, _SPANS.c.span_type == "llm",
                _SPANS.c.component.isnot(None)))
            with store.read() as conn:
                for row in conn.execute(query):
                    key = key_of_span(json.loads(row.attributes))
                    if key in pending and key not in found:
                        found[key] = row.component
        out = Counter(self.hits)
        for key, count in pending.items():
            out[found.get(key, "unknown")] += count
        return dict(out)


# The cache serving the current context (a rollout), if any.
_serving: ContextVar[ReplayCache | None] = ContextVar("gepa_trace_replay_cache", default=None)


class _RunScoped(BaseCache):
    """langchain's global cache while rollouts are served: a call inside ``serving()``
    goes to that run's cache, any other call to the cache installed before (if any)."""

    def __init__(self, previous: BaseCache | None):
        self.previous = previous

    def _target(self) -> BaseCache | None:
        serving = _serving.get()  # not `or`: an empty ReplayCache is falsy (__len__)
        return serving if serving is not None else self.previous

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        target = self._target()
        return target.lookup(prompt, llm_string) if target is not None else None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        target = self._target()
        if target is not None:
            target.update(prompt, llm_string, return_val)

    def clear(self, **kwargs: Any) -> None:
        if self.previous is not None:
            self.previous.clear(**kwargs)


_dispatch_lock = threading.Lock()
_dispatch: _RunScoped | None = None
_dispatch_users = 0


def _dispatcher_enter() -> None:
    from langchain_core.globals import get_llm_cache, set_llm_cache

    global _dispatch, _dispatch_users
    with _dispatch_lock:
        current = get_llm_cache()
        if _dispatch is None or current is not _dispatch:
            # first rollout, or someone replaced the global cache meanwhile: wrap theirs
            _dispatch = _RunScoped(current)
            set_llm_cache(_dispatch)
        _dispatch_users += 1


def _dispatcher_exit() -> None:
    from langchain_core.globals import get_llm_cache, set_llm_cache

    global _dispatch, _dispatch_users
    with _dispatch_lock:
        _dispatch_users -= 1
        if _dispatch_users == 0 and _dispatch is not None:
            if get_llm_cache() is _dispatch:
                set_llm_cache(_dispatch.previous)
            _dispatch = None
