"""LangChain callbacks -> OpenTelemetry spans.

``SpanRecorder`` is a langchain-core callback handler. ``instrument()`` makes
langchain-core add it to every callback manager it configures, so every run of every
runnable (chains, prompts, chat models and LLMs, tools, retrievers, LangGraph nodes;
sync, async, streaming, in threads) calls it. Each run becomes one span whose parent is
the span of the run's ``parent_run_id``: the tree follows LangChain's own run tree, so
runs handed to threads or tasks keep their parent as long as their config travels with
them, whatever the OTel context of that thread says.

A run with no parent is the root of a new trace, unless it starts inside
``gepa_trace.agent_run(...)``, whose span then is its parent.

Component attribution: a prompt run (``run_type="prompt"``) names its component (see
``_component_of``) and, when it ends, leaves its formatted messages in the trace's state;
an LLM run whose input messages equal (or start with) those messages is attributed to
that component and carries its version and template.

Contract: a callback never raises into the user's run. An internal error is logged once
per distinct error and kept in ``internal_errors``; only when ``raise_internal_errors``
is true (the default under pytest) is it re-raised, so tests see our bugs.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from functools import wraps
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.trace import Span, Status, StatusCode

from gepa_trace.collectors.langchain_values import (
    TemplateCache,
    content_text,
    document_attributes,
    dumps,
    jsonable,
    match_key,
    messages_attributes,
    redacted,
    token_counts,
    value_attributes,
)
from gepa_trace.config import under_pytest
from gepa_trace.prompts.canary import ALIAS_ATTRIBUTE, routed_alias
from gepa_trace.prompts.templates import COMPONENT_KEY, VERSION_KEY

#: set on a message served from the replay cache (gepa_trace.replay.cache), and on
#: the LLM span of such a call
REPLAY_CACHE_HIT = "gepa.replay_cache"
logger = logging.getLogger("gepa_trace.capture")

try:  # the key the OTel SDK sets while exporting; private in the API, used by the SDK itself
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY as SUPPRESS_KEY
except ImportError:  # pragma: no cover - every supported opentelemetry-api has it
    SUPPRESS_KEY = otel_context.create_key("suppress_instrumentation")

# Metadata keys the optimizer puts on its rollouts; copied onto every span of the trace.
TRACE_TAGS = ("gepa.run.id", "gepa.candidate.id", "gepa.example.id")
HIDDEN_TAG = "langsmith:hidden"  # LangGraph's internal plumbing runs (writers, routers)
_PROMPT_CLASSES = {"ChatPromptTemplate", "PromptTemplate", "FewShotChatMessagePromptTemplate"}
_EMPTY_CONTEXT = otel_context.Context()


class Trace:
    """What spans of one trace share: the agent, the rollout tags, and the formatted
    output of each prompt run (for attributing LLM calls to components)."""

    __slots__ = ("agent", "prompt_lengths", "prompts", "tags")

    def __init__(self, agent: str, tags: Mapping[str, str] | None = None):
        self.agent = agent
        self.tags: dict[str, str] = dict(tags or {})
        self.prompts: dict[tuple, dict[str, str]] = {}
        self.prompt_lengths: set[int] = set()

    def remember_prompt(self, key: tuple, component: dict[str, str]) -> None:
        self.prompts[key] = component
        self.prompt_lengths.add(len(key))

    def component_of_messages(self, key: tuple) -> dict[str, str] | None:
        """The prompt whose output is these messages, else the longest one they start with."""
        found = self.prompts.get(key)
        if found is not None:
            return found
        for length in sorted(self.prompt_lengths, reverse=True):
            if length < len(key):
                found = self.prompts.get(key[:length])
                if found is not None:
                    return found
        return None


class Parent:
    """The explicit root of ``agent_run``: its span and trace, for runs started inside."""

    __slots__ = ("span", "trace")

    def __init__(self, span: Span, trace: Trace):
        self.span = span
        self.trace = trace


current_parent: ContextVar[Parent | None] = ContextVar("gepa_trace_agent_run", default=None)


class _Run:
    __slots__ = ("component", "kind", "root", "span", "trace", "visible")

    def __init__(self, span: Span | None, trace: Trace, kind: str, root: bool = False):
        self.span = span
        self.trace = trace
        self.kind = kind
        self.visible = self  # a hidden run points at its nearest visible ancestor
        self.root = root
        self.component: dict[str, str] | None = None


def _guarded(method: Callable) -> Callable:
    @wraps(method)
    def call(self: SpanRecorder, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - capture must never break the agent
            self._keep_tree(kwargs.get("run_id"), kwargs.get("parent_run_id"))
            self.internal_error(exc, method.__name__)
            return None
    return call


def _is_bubble_up(error: BaseException) -> bool:
    # LangGraph signals interrupts and parent commands with exceptions; they are control
    # flow, not failures.
    return any(cls.__name__ == "GraphBubbleUp" for cls in type(error).__mro__)


class SpanRecorder(BaseCallbackHandler):
    """Turns LangChain runs into spans of ``tracer``. Thread-safe: its state is dicts
    keyed by run id, touched one key at a time."""

    run_inline = True  # called in the event loop, in order, not in an executor thread

    def __init__(self, tracer: trace_api.Tracer, *, agent: str, capture_content: bool = True,
                 redact: Callable[[str], str] | None = None,
                 raise_internal_errors: bool | None = None, max_open_runs: int = 100_000):
        self.tracer = tracer
        self.agent = agent
        self.capture_content = capture_content
        self.redact = redact
        self.raise_internal_errors = (under_pytest() if raise_internal_errors is None
                                      else raise_internal_errors)
        self.internal_errors: list[str] = []
        self._seen_errors: set[str] = set()
        self._runs: dict[UUID, _Run] = {}
        self._max_open_runs = max_open_runs
        self._templates = TemplateCache()
        self.root_trace_ids: dict[UUID, str] = {}  # root run id -> trace id (bounded)

    # LangChain re-raises a handler's exception only when this is true.
    @property
    def raise_error(self) -> bool:  # type: ignore[override]
        return self.raise_internal_errors

    def internal_error(self, exc: BaseException, where: str) -> None:
        key = f"{where}: {type(exc).__name__}: {exc}"[:300]
        if key not in self._seen_errors:
            self._seen_errors.add(key)
            self.internal_errors.append(key)
            logger.warning("gepa-trace could not record a LangChain run (%s); the run itself "
                           "is unaffected", key, exc_info=exc)
        if self.raise_internal_errors:
            raise exc

    def _keep_tree(self, run_id: UUID | None, parent_run_id: UUID | None) -> None:
        # A run we failed to record must not cut its children off the trace: they hang
        # on its nearest recorded ancestor instead.
        if run_id is None or run_id in self._runs or parent_run_id is None:
            return
        parent = self._runs.get(parent_run_id)
        if parent is not None:
            alias = _Run(None, parent.trace, "CHAIN")
            alias.visible = parent.visible
            self._runs[run_id] = alias

    # --- spans ----------------------------------------------------------------------

    def _clean(self, attributes: dict[str, Any]) -> dict[str, Any]:
        return redacted(attributes, self.redact) if self.redact is not None else attributes

    def _start(self, run_id: UUID, parent_run_id: UUID | None, name: str, kind: str,
               metadata: Mapping[str, Any] | None, tags: Sequence[str] | None,
               attributes: dict[str, Any]) -> _Run | None:
        if otel_context.get_value(SUPPRESS_KEY):
            return None
        parent = self._runs.get(parent_run_id) if parent_run_id is not None else None
        metadata = metadata or {}
        if parent is not None:
            parent = parent.visible
            if tags and HIDDEN_TAG in tags and kind == "CHAIN":
                hidden = _Run(None, parent.trace, kind)
                hidden.visible = parent
                self._runs[run_id] = hidden
                return None
            trace, parent_span, root = parent.trace, parent.span, False
        else:
            outer = current_parent.get()
            if outer is not None:
                trace, parent_span, root = outer.trace, outer.span, False
            else:
                agent = metadata.get("gepa.agent") or self.agent
                trace, parent_span, root = Trace(str(agent)), None, True
                routed = routed_alias()
                if routed is not None:  # gt.load_prompts said which alias serves this run
                    attributes[ALIAS_ATTRIBUTE] = routed
                if kind == "CHAIN":
                    kind = "AGENT"  # the outermost run of an agent is its root
        for key in TRACE_TAGS:
            if key in metadata and key not in trace.tags:
                trace.tags[key] = str(metadata[key])
        attributes["openinference.span.kind"] = kind
        attributes["gepa.agent"] = trace.agent
        attributes.update(trace.tags)
        if metadata:
            # plain data (strings, numbers, small dicts): JSON's own fallback suffices
            attributes["metadata"] = dumps(metadata)
            node = metadata.get("langgraph_node")
            if node is not None and node == name:
                attributes["graph.node.id"] = str(node)
        if len(self._runs) >= self._max_open_runs:
            # Runs that never ended (abandoned generators); forget the oldest half.
            for key in list(self._runs)[: self._max_open_runs // 2]:
                self._runs.pop(key, None)
        span = self.tracer.start_span(
            name, context=trace_api.set_span_in_context(parent_span) if parent_span
            else _EMPTY_CONTEXT, attributes=self._clean(attributes))
        run = _Run(span, trace, kind, root)
        self._runs[run_id] = run
        return run

    def _end(self, run_id: UUID, attributes: dict[str, Any] | None = None) -> _Run | None:
        run = self._runs.pop(run_id, None)
        if run is None or run.span is None:
            return None
        if attributes:
            run.span.set_attributes(self._clean(attributes))
        run.span.end()
        if run.root:
            self._remember_root(run_id, run.span)
        return run

    def _remember_root(self, run_id: UUID, span: Span) -> None:
        if len(self.root_trace_ids) >= 10_000:
            for key in list(self.root_trace_ids)[:5_000]:
                self.root_trace_ids.pop(key, None)
        self.root_trace_ids[run_id] = format(span.get_span_context().trace_id, "032x")

    def _fail(self, run_id: UUID, error: BaseException) -> None:
        run = self._runs.pop(run_id, None)
        if run is None or run.span is None:
            return
        record_error(run.span, error, capture_content=self.capture_content, clean=self._clean)
        run.span.end()
        if run.root:
            self._remember_root(run_id, run.span)

    def trace_id_of(self, run_id: UUID) -> str | None:
        """The trace id (32 hex) of a root LangChain run, open or recently finished."""
        run = self._runs.get(run_id)
        if run is not None and run.visible.span is not None:
            return format(run.visible.span.get_span_context().trace_id, "032x")
        return self.root_trace_ids.get(run_id)

    # --- chains and prompts ------------------------------------------------------------

    @_guarded
    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, tags: list[str] | None = None,
                       metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        name = kwargs.get("name") or _name_of(serialized, "chain")
        attributes: dict[str, Any] = {}
        if kwargs.get("run_type") == "prompt":
            kind = "PROMPT"
            component = self._component_of(serialized, name, metadata, parent_run_id)
            if self.capture_content:
                # The LLM span this prompt feeds carries them too: log-only replay
                # re-renders that call from its own span.
                component["gepa.prompt.variables"] = dumps(jsonable(inputs))
            attributes.update(component)
        else:
            kind, component = "CHAIN", None
        if self.capture_content:
            value_attributes(attributes, "input", inputs)
        run = self._start(run_id, parent_run_id, name, kind, metadata, tags, attributes)
        if run is not None:
            run.component = component

    def _component_of(self, serialized: Any, name: str, metadata: Mapping[str, Any] | None,
                      parent_run_id: UUID | None) -> dict[str, str]:
        """A prompt run's component: explicit (``gepa.component`` metadata, set by
        ``gt.component()``/PromptSet), else its run name if one was given, else the
        LangGraph node it runs in, else ``prompt-<version>``."""
        metadata = metadata or {}
        template = self._templates.get(serialized)
        version = metadata.get(VERSION_KEY) or (template[1] if template else None)
        out: dict[str, str] = {}
        if template is not None and template[1] == version:
            out["gepa.prompt.template"] = template[0]
        if version:
            out["gepa.prompt.version"] = str(version)
        component = metadata.get(COMPONENT_KEY)
        if not component and name not in _PROMPT_CLASSES:
            component = name
        if not component:
            component = metadata.get("langgraph_node")
        if not component and version:
            component = f"prompt-{version}"
        if component:
            out["gepa.component"] = str(component)
            out["gen_ai.prompt.name"] = str(component)  # the GenAI conventions' name for it
        return out

    @_guarded
    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.get(run_id)
        if run is None or run.span is None:
            self._runs.pop(run_id, None)
            return
        attributes: dict[str, Any] = {}
        if run.kind == "PROMPT" and run.component and hasattr(outputs, "to_messages"):
            messages = outputs.to_messages()
            run.trace.remember_prompt(match_key(messages), run.component)
            if self.capture_content:
                attributes["output.value"] = dumps(jsonable(messages))
                attributes["output.mime_type"] = "application/json"
        elif self.capture_content:
            value_attributes(attributes, "output", outputs)
        self._end(run_id, attributes)

    @_guarded
    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if _is_bubble_up(error):
            self._end(run_id)
        else:
            self._fail(run_id, error)

    # --- LLMs --------------------------------------------------------------------------

    @_guarded
    def on_chat_model_start(self, serialized: dict[str, Any] | None,
                            messages: list[list[Any]], *, run_id: UUID,
                            parent_run_id: UUID | None = None, tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        inputs = messages[0] if messages else []
        attributes = self._llm_attributes(serialized, metadata, kwargs)
        messages_attributes(attributes, "llm.input_messages", inputs, self.capture_content)
        self._start_llm(run_id, parent_run_id, serialized, metadata, tags, kwargs, attributes,
                        match_key(inputs))

    @_guarded
    def on_llm_start(self, serialized: dict[str, Any] | None, prompts: list[str], *,
                     run_id: UUID, parent_run_id: UUID | None = None,
                     tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                     **kwargs: Any) -> None:
        text = prompts[0] if prompts else ""
        attributes = self._llm_attributes(serialized, metadata, kwargs)
        attributes["llm.input_messages.0.message.role"] = "user"
        if self.capture_content:
            attributes["llm.input_messages.0.message.content"] = text
            attributes["input.value"] = text
            attributes["input.mime_type"] = "text/plain"
        self._start_llm(run_id, parent_run_id, serialized, metadata, tags, kwargs, attributes,
                        (("human", text),))

    def _llm_attributes(self, serialized: Any, metadata: Mapping[str, Any] | None,
                        kwargs: Mapping[str, Any]) -> dict[str, Any]:
        params = kwargs.get("invocation_params") or {}
        metadata = metadata or {}
        attributes: dict[str, Any] = {}
        model = (params.get("model") or params.get("model_name") or params.get("model_id")
                 or metadata.get("ls_model_name"))
        if model:
            attributes["llm.model_name"] = str(model)
        provider = metadata.get("ls_provider")
        if provider:
            attributes["llm.provider"] = str(provider)
        if params:
            attributes["llm.invocation_parameters"] = dumps(params)
        return attributes

    def _start_llm(self, run_id: UUID, parent_run_id: UUID | None, serialized: Any,
                   metadata: Mapping[str, Any] | None, tags: Sequence[str] | None,
                   kwargs: Mapping[str, Any], attributes: dict[str, Any], key: tuple) -> None:
        parent = self._runs.get(parent_run_id) if parent_run_id is not None else None
        outer = current_parent.get() if parent is None else None
        trace = parent.trace if parent is not None else outer.trace if outer else None
        component = trace.component_of_messages(key) if trace is not None else None
        if component is not None:
            attributes.update(component)
        elif metadata and metadata.get(COMPONENT_KEY):
            attributes["gepa.component"] = str(metadata[COMPONENT_KEY])
            if metadata.get(VERSION_KEY):
                attributes["gepa.prompt.version"] = str(metadata[VERSION_KEY])
        name = kwargs.get("name") or _name_of(serialized, "llm")
        self._start(run_id, parent_run_id, name, "LLM", metadata, tags, attributes)

    @_guarded
    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.get(run_id)
        if run is None or run.span is None:
            self._runs.pop(run_id, None)
            return
        attributes: dict[str, Any] = token_counts(response)
        generations = response.generations[0] if response.generations else []
        outputs = [g.message for g in generations if getattr(g, "message", None) is not None]
        if outputs:
            messages_attributes(attributes, "llm.output_messages", outputs, self.capture_content)
            text = content_text(outputs[0].content)
            if (getattr(outputs[0], "response_metadata", None) or {}).get(REPLAY_CACHE_HIT):
                # answered by the replay cache, not the model: it cost no call
                attributes[REPLAY_CACHE_HIT] = True
        else:
            text = generations[0].text if generations else ""
            attributes["llm.output_messages.0.message.role"] = "assistant"
            if self.capture_content:
                attributes["llm.output_messages.0.message.content"] = text
        if self.capture_content:
            attributes["output.value"] = text
            attributes["output.mime_type"] = "text/plain"
        model = (response.llm_output or {}).get("model_name") if response.llm_output else None
        if model:
            attributes["llm.model_name"] = str(model)
        self._end(run_id, attributes)

    @_guarded
    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._fail(run_id, error)

    # --- tools and retrievers ------------------------------------------------------------

    @_guarded
    def on_tool_start(self, serialized: dict[str, Any] | None, input_str: str, *,
                      run_id: UUID, parent_run_id: UUID | None = None,
                      tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                      inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        name = kwargs.get("name") or _name_of(serialized, "tool")
        attributes: dict[str, Any] = {"tool.name": name}
        description = (serialized or {}).get("description")
        if description:
            attributes["tool.description"] = str(description)
        if kwargs.get("tool_call_id"):
            attributes["tool_call.id"] = str(kwargs["tool_call_id"])
        if self.capture_content:
            if inputs is not None:
                value_attributes(attributes, "input", inputs)
            else:
                value_attributes(attributes, "input", input_str)
        self._start(run_id, parent_run_id, name, "TOOL", metadata, tags, attributes)

    @_guarded
    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        attributes: dict[str, Any] = {}
        if self.capture_content:
            content = getattr(output, "content", None) if hasattr(output, "tool_call_id") else None
            value_attributes(attributes, "output",
                             content_text(content) if content is not None else output)
        self._end(run_id, attributes)

    @_guarded
    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if _is_bubble_up(error):
            self._end(run_id)
        else:
            self._fail(run_id, error)

    @_guarded
    def on_retriever_start(self, serialized: dict[str, Any] | None, query: str, *,
                           run_id: UUID, parent_run_id: UUID | None = None,
                           tags: list[str] | None = None,
                           metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        name = kwargs.get("name") or _name_of(serialized, "retriever")
        attributes: dict[str, Any] = {}
        if self.capture_content:
            value_attributes(attributes, "input", query)
        self._start(run_id, parent_run_id, name, "RETRIEVER", metadata, tags, attributes)

    @_guarded
    def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID, **kwargs: Any) -> None:
        attributes: dict[str, Any] = {}
        document_attributes(attributes, documents, self.capture_content)
        self._end(run_id, attributes)

    @_guarded
    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._fail(run_id, error)

    # --- explicit roots (agent_run) -------------------------------------------------------

    def start_agent_span(self, agent: str, inputs: Any, tags: Mapping[str, Any]) -> Parent:
        """The span of ``agent_run``: a child of the enclosing agent_run if any, else the
        root of a new trace."""
        outer = current_parent.get()
        trace = outer.trace if outer is not None else Trace(agent, {
            k: str(v) for k, v in tags.items() if k in TRACE_TAGS})
        attributes: dict[str, Any] = {"openinference.span.kind": "AGENT",
                                      "gepa.agent": trace.agent, "agent.name": agent}
        attributes.update(trace.tags)
        routed = routed_alias() if outer is None else None
        if routed is not None:  # gt.load_prompts said which alias serves this run
            attributes[ALIAS_ATTRIBUTE] = routed
        if self.capture_content and inputs is not None:
            value_attributes(attributes, "input", inputs)
        span = self.tracer.start_span(
            agent, context=trace_api.set_span_in_context(outer.span) if outer is not None
            else _EMPTY_CONTEXT, attributes=self._clean(attributes))
        return Parent(span, trace)

    def end_agent_span(self, parent: Parent, outputs: Any, error: BaseException | None) -> None:
        if self.capture_content and outputs is not None:
            attributes: dict[str, Any] = {}
            value_attributes(attributes, "output", outputs)
            parent.span.set_attributes(self._clean(attributes))
        if error is not None:
            record_error(parent.span, error, capture_content=self.capture_content,
                         clean=self._clean)
        parent.span.end()


def record_error(span: Span, error: BaseException, *, capture_content: bool,
                 clean: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Status ERROR plus an OTel ``exception`` event. Without content capture only the
    exception's type is kept: messages and tracebacks often quote the inputs."""
    kind = type(error).__name__
    event: dict[str, Any] = {"exception.type": f"{type(error).__module__}.{type(error).__qualname__}"}
    if capture_content:
        event["exception.message"] = str(error)
        event["exception.stacktrace"] = "".join(
            traceback.format_exception(type(error), error, error.__traceback__))
        description = clean({"d": f"{kind}: {error}"})["d"]
    else:
        description = kind
    span.add_event("exception", clean(event))
    span.set_status(Status(StatusCode.ERROR, description))


def _name_of(serialized: Any, default: str) -> str:
    if isinstance(serialized, Mapping):
        name = serialized.get("name")
        if name:
            return str(name)
        ident = serialized.get("id")
        if ident:
            return str(ident[-1])
    return default
