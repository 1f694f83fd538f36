"""``instrument()``: one call that records every LangChain run of the process into the store.

    inst = gt.instrument(store="sqlite:///gepa_trace.db", service_name="support-agent")
    with gt.agent_run("support-agent", inputs=question) as run:   # optional explicit root
        run.set_outputs(agent.invoke(question))
    gt.record_feedback(run.trace_id, score=1.0)

Decisions, and why:

- Our own ``TracerProvider``, never the global one. Our spans go only to our exporters
  (the store, and OTLP when ``otlp_endpoint`` is given), so an app with its own provider
  is neither broken nor double-fed, and installing another instrumentation (e.g.
  OpenInference on the global provider) does not make us record twice. ``agent_run``
  makes its span current in the OTel context, so the app's own spans started inside it
  join its trace.
- The hook into langchain-core is its configure hook (``register_configure_hook``, the
  way LangSmith's tracer is added), registered once per process with a slot whose
  ``get()`` returns the active ``SpanRecorder``. Every callback manager langchain-core
  configures then carries exactly one recorder (it compares by identity), in every thread
  and task; ``shutdown()`` empties the slot, which switches recording off.
- ``instrument()`` twice: with the same settings the second call returns the same
  ``Instrumentation``; with different settings the old one is shut down (flushed) and
  replaced. At most one recorder is ever active, so nothing is recorded twice.
- Spans are exported by ``BatchSpanProcessor`` (``GEPA_TRACE_EXPORT_BATCH``,
  ``GEPA_TRACE_EXPORT_DELAY_MS``) on its own thread; the agent never waits for the store.
  ``shutdown()`` (also run at interpreter exit) flushes what is queued.
- The store given to ``instrument()`` becomes the process's default store for every
  later call that takes ``store=`` (``record_feedback``, ``optimize``, ``load_prompts``,
  ``open_store``): feedback must land where the runs are. It stays the default after
  ``shutdown()``, until the next ``instrument()`` call; the full order of precedence is
  in ``gepa_trace.store.engine``.
- The exporter is what creates the store (on its first write), so an agent that never
  finishes a run leaves no file behind, and an unavailable store never stops the agent.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any, Self
from uuid import UUID

from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from gepa_trace.collectors.exporter import CountingBatchSpanProcessor, SqlSpanExporter
from gepa_trace.collectors.langchain import Parent, SpanRecorder, current_parent
from gepa_trace.config import setting
from gepa_trace.errors import ConfigError, MissingDependency
from gepa_trace.store.engine import Store, resolve_url, set_instrumented_store

logger = logging.getLogger("gepa_trace.capture")


class _RecorderSlot:
    """What langchain-core's configure hook reads: it calls ``get()`` on the object it
    was registered with (a ContextVar in LangSmith's case). A ContextVar's value would not
    reach threads started without a copied context, so this slot is process-wide."""

    def __init__(self) -> None:
        self.recorder: SpanRecorder | None = None

    def get(self) -> SpanRecorder | None:
        return self.recorder


_slot = _RecorderSlot()
_lock = threading.RLock()
_active: Instrumentation | None = None
_hook_registered = False
_atexit_registered = False


class Instrumentation:
    """The handle ``instrument()`` returns: its provider, recorder and exporter."""

    def __init__(self, *, store_url: str, store: Store | None, service_name: str,
                 capture_content: bool, redact: Callable[[str], str] | None,
                 otlp_endpoint: str | None):
        self.store_url = store_url
        self.service_name = service_name
        self.capture_content = capture_content
        self.redact = redact
        self.otlp_endpoint = otlp_endpoint
        # built first: a bad endpoint must fail before any thread is started
        otlp = _otlp_exporter(otlp_endpoint) if otlp_endpoint else None
        self.exporter = SqlSpanExporter(store if store is not None else store_url)
        self.tracer_provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}),
            # LLM spans carry several attributes per message; the SDK's default limit
            # (128) would silently drop the end of long conversations.
            span_limits=SpanLimits(max_span_attributes=100_000,
                                   max_event_attributes=1_000))
        batch = int(setting("export_batch_size"))
        # Counts the spans its full queue refuses (the SDK's drops them silently).
        self.tracer_provider.add_span_processor(CountingBatchSpanProcessor(
            self.exporter, max_export_batch_size=batch, max_queue_size=max(8 * batch, 2048),
            schedule_delay_millis=int(setting("export_delay_ms"))))
        if otlp is not None:
            self.tracer_provider.add_span_processor(BatchSpanProcessor(otlp))
        from gepa_trace import __version__

        self.tracer = self.tracer_provider.get_tracer("gepa_trace", __version__)
        self.recorder = SpanRecorder(self.tracer, agent=service_name,
                                     capture_content=capture_content, redact=redact)
        self._shut = False
        self._unregister_flush = _register_feedback_flush(self.force_flush)

    @property
    def active(self) -> bool:
        return not self._shut and _slot.recorder is self.recorder

    def _settings(self) -> tuple:
        return (self.store_url, self.service_name, self.capture_content, self.redact,
                self.otlp_endpoint)

    def trace_id_of(self, run_id: UUID | str) -> str | None:
        """The trace id (32 hex) of a root LangChain run, given the ``run_id`` passed in
        its config (``agent.invoke(x, config={"run_id": rid})``); None if unknown."""
        return self.recorder.trace_id_of(UUID(str(run_id)))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Write every finished span now. True when the store took them all; False when
        it is refusing writes (the spans are kept to retry, up to the exporter's limit)
        or when any span was dropped since the previous ``force_flush`` (counted in
        ``exporter.dropped``)."""
        if self._shut:
            return False
        ok = self.tracer_provider.force_flush(timeout_millis)
        # The batch processor only hands over new spans; spans kept from batches the
        # store refused are retried here (and with every later batch).
        clean = self.exporter.force_flush(timeout_millis)
        return bool(ok) and clean and self.exporter.last_error is None

    def shutdown(self) -> None:
        """Stop recording, flush what is queued, release the exporters. Idempotent."""
        global _active
        with _lock:
            if self._shut:
                return
            self._shut = True
            if _slot.recorder is self.recorder:
                _slot.recorder = None
            if _active is self:
                _active = None
        if self._unregister_flush is not None:
            self._unregister_flush()
        self.tracer_provider.shutdown()

    def __repr__(self) -> str:
        state = "active" if self.active else "shut down"
        return f"Instrumentation({self.service_name!r} -> {self.exporter.url!r}, {state})"


def instrument(store: str | Store | None = None, service_name: str | None = None,
               capture_content: bool | None = None,
               redact: Callable[[str], str] | None = None,
               otlp_endpoint: str | None = None) -> Instrumentation:
    """Record every LangChain run of this process into ``store`` as OTel spans.

    ``store``: a store URL (default: the previous ``instrument()``'s, else
    ``GEPA_TRACE_STORE``, else ``sqlite:///gepa_trace.db``) or an open ``Store``; it is
    opened, and created if missing, on the first export, so an unavailable store never
    stops the agent. It becomes the default store of every later call in this process
    that takes ``store=`` (see the module docstring). ``service_name``: the agent name of root runs (default
    ``OTEL_SERVICE_NAME``, else ``langchain-agent``). ``capture_content=False`` records
    structure only (roles, names, counts, tokens, templates) without message text, inputs
    or outputs. ``redact(str) -> str`` is applied to every string value recorded.
    ``otlp_endpoint``: also export over OTLP (http/protobuf; gRPC when the URL starts with
    ``grpc://`` or uses port 4317).
    """
    global _active, _hook_registered, _atexit_registered
    if redact is not None and not callable(redact):
        raise ValueError("redact must be a callable taking and returning a string")
    if service_name is not None and (not isinstance(service_name, str) or not service_name):
        raise ValueError("service_name must be a non-empty string")
    store_obj = store if isinstance(store, Store) else None
    url = store.url if isinstance(store, Store) else resolve_url(store)
    settings = (url, str(setting("service_name", service_name)),
                bool(setting("capture_content", capture_content)), redact, otlp_endpoint)
    with _lock:
        if _active is not None and not _active._shut:
            if _active._settings() == settings:
                set_instrumented_store(url)
                return _active
            _active.shutdown()
        inst = Instrumentation(store_url=url, store=store_obj, service_name=settings[1],
                               capture_content=settings[2], redact=redact,
                               otlp_endpoint=otlp_endpoint)
        if not _hook_registered:
            from langchain_core.tracers.context import register_configure_hook

            register_configure_hook(_slot, True)  # type: ignore[arg-type]
            _hook_registered = True
        if not _atexit_registered:
            atexit.register(_shutdown_at_exit)
            _atexit_registered = True
        _slot.recorder = inst.recorder
        _active = inst
        set_instrumented_store(url)
        return inst


def active_instrumentation() -> Instrumentation | None:
    """The instrumentation currently recording, if any."""
    return _active


def _shutdown_at_exit() -> None:
    inst = _active
    if inst is not None:
        inst.shutdown()


def _register_feedback_flush(flush: Callable[[], Any]) -> Callable[[], None] | None:
    # record_feedback right after a run must find the run's spans, which may still sit in
    # the BatchSpanProcessor's queue: let it flush us before refusing an unknown trace.
    try:
        from gepa_trace.store.feedback import register_flush_hook
    except ImportError:  # pragma: no cover - the feedback module is part of the package
        return None
    return register_flush_hook(flush)


def _otlp_exporter(endpoint: str):
    grpc = endpoint.startswith("grpc://") or endpoint.rstrip("/").endswith(":4317")
    try:
        if grpc:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )

            target = endpoint.removeprefix("grpc://")
            return OTLPSpanExporter(endpoint=target, insecure=not endpoint.startswith("https"))
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
    except ImportError as exc:
        raise MissingDependency("otlp_endpoint needs the OTLP exporter: "
                                "pip install opentelemetry-exporter-otlp") from exc
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"otlp_endpoint {endpoint!r} must start with http://, https:// "
                          "or grpc://")
    if not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint)


class AgentRun:
    """One run of an agent as an explicit root span (OpenInference kind AGENT).

    Use as a context manager, sync or async. LangChain runs started inside (in this
    thread or task, or in threads/tasks that copied its context) become its children.
    ``trace_id`` (32 hex) names the trace for ``record_feedback``. An exception leaving
    the block is recorded on the span and propagates unchanged. Without an active
    ``instrument()`` nothing is recorded and ``trace_id`` is a fresh random id.
    """

    def __init__(self, agent: str, inputs: Any = None,
                 metadata: Mapping[str, Any] | None = None,
                 recorder: SpanRecorder | None = None):
        if not isinstance(agent, str) or not agent:
            raise ValueError("agent must be a non-empty string")
        self.agent = agent
        self._given = recorder  # else the active instrumentation's
        self.inputs = inputs
        self.metadata = dict(metadata or {})
        self.outputs: Any = None
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self._parent: Parent | None = None
        self._recorder: SpanRecorder | None = None
        self._tokens: tuple | None = None

    def set_outputs(self, outputs: Any) -> None:
        self.outputs = outputs

    def __enter__(self) -> Self:
        inst = _active
        if self._given is None and (inst is None or not inst.active):
            logger.warning("gepa_trace.agent_run(%r) outside instrument(): nothing is "
                           "recorded", self.agent)
            self.trace_id = secrets.token_hex(16)
            return self
        self._recorder = recorder = self._given or inst.recorder  # type: ignore[union-attr]
        self._parent = parent = recorder.start_agent_span(self.agent, self.inputs,
                                                  self.metadata)
        ctx = parent.span.get_span_context()
        self.trace_id = format(ctx.trace_id, "032x")
        self.span_id = format(ctx.span_id, "016x")
        self._tokens = (current_parent.set(parent),
                        otel_context.attach(trace_api.set_span_in_context(parent.span)))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._parent is None or self._recorder is None:
            return
        parent_token, otel_token = self._tokens  # type: ignore[misc]
        try:
            otel_context.detach(otel_token)
            current_parent.reset(parent_token)
        except ValueError:
            # Exited in another context than entered (a generator closed elsewhere):
            # the span still ends; the context vars of that other context are untouched.
            pass
        try:
            self._recorder.end_agent_span(self._parent, self.outputs, exc)
        except Exception as error:  # noqa: BLE001 - recording must not mask the block's outcome
            self._recorder.internal_error(error, "agent_run")
        return

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        return self.__exit__(exc_type, exc, tb)


def agent_run(agent: str, inputs: Any = None, *,
              metadata: Mapping[str, Any] | None = None,
              recorder: SpanRecorder | None = None) -> AgentRun:
    """An explicit root span for one run of ``agent`` (see ``AgentRun``). ``metadata``
    may carry the optimizer's rollout tags (``gepa.run.id``, ``gepa.candidate.id``,
    ``gepa.example.id``), which are then copied onto every span of the trace.
    ``recorder``: record on this ``SpanRecorder`` instead of the active instrumentation's
    (``replay.recording``'s in-memory recording of a rollout)."""
    return AgentRun(agent, inputs, metadata, recorder)


__all__ = ["AgentRun", "Instrumentation", "active_instrumentation", "agent_run", "instrument"]
