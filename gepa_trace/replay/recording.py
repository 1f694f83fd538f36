"""Where an in-process rollout is recorded, and how its spans are taken back.

A rollout is recorded the way a production run is: langchain-core callbacks ->
``SpanRecorder`` -> OTel spans, under an ``agent_run`` root span. There are two places
to record into, and they give the same spans:

- ``Recording.into(instrumentation)``: the instrumentation's tracer provider, so the
  spans also go to its store (``gepa-trace optimize``: rollouts are traces, tagged with
  the optimization run). The recorder is the one langchain-core's configure hook adds to
  every run.
- ``Recording.in_memory(agent)``: a private tracer provider with no exporter (the demo's
  accuracy, the tests and the benchmarks when nothing is instrumented). Its recorder is
  handed to the run as a callback; nothing global changes and nothing is written.

``recording_for`` picks: the instrumentation the caller gave, else the one active in
this process (a private recorder beside an active one would hang the active one's spans
under a root span its store never sees), else in memory.

Either way ``RolloutSpans`` keeps the finished spans of the watched traces as span dicts
(``collectors.exporter.span_to_dict``, the shape the store keeps), taken as they end so
a rollout never waits for an exporter.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider

from gepa_trace.collectors.exporter import span_to_dict


class RolloutSpans(SpanProcessor):
    """Keeps the finished spans of the traces being watched, until taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, list[dict[str, Any]]] = {}

    def watch(self, trace_id: str) -> None:
        with self._lock:
            self._watched[int(trace_id, 16)] = []

    def take(self, trace_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return self._watched.pop(int(trace_id, 16), [])

    def on_start(self, span, parent_context=None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        tid = span.context.trace_id
        if tid in self._watched:  # a cheap check first: most spans are not watched
            converted = span_to_dict(span)
            with self._lock:
                bucket = self._watched.get(tid)
                if bucket is not None:
                    bucket.append(converted)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass
class Recording:
    """A tracer provider with ``spans`` on it, and how a run reaches its recorder:
    ``recorder`` is the ``agent_run`` root's (None: the active instrumentation's) and
    ``callbacks`` go into the run's config (empty when the configure hook adds it)."""

    provider: TracerProvider
    recorder: Any = None
    callbacks: list[Any] = field(default_factory=list)
    spans: RolloutSpans = field(default_factory=RolloutSpans)

    def __post_init__(self) -> None:
        self.provider.add_span_processor(self.spans)

    @classmethod
    def into(cls, instrumentation: Any) -> Recording:
        return cls(instrumentation.tracer_provider)

    @classmethod
    def in_memory(cls, agent: str) -> Recording:
        from gepa_trace import __version__
        from gepa_trace.collectors.langchain import SpanRecorder

        # the same resource and limits as instrument()'s provider: the same span dicts
        provider = TracerProvider(resource=Resource.create({"service.name": agent}),
                                  shutdown_on_exit=False,  # nothing to flush; no atexit ref
                                  span_limits=SpanLimits(max_span_attributes=100_000,
                                                         max_event_attributes=1_000))
        recorder = SpanRecorder(provider.get_tracer("gepa_trace", __version__), agent=agent)
        return cls(provider, recorder, [recorder])

    def run(self, agent: str, inputs: Any, metadata: dict[str, Any]) -> Any:
        """The ``agent_run`` root span of one rollout on this recording."""
        from gepa_trace.collectors.instrument import agent_run

        return agent_run(agent, inputs=inputs, metadata=metadata, recorder=self.recorder)


class Recordings:
    """One evaluator's recordings: the given instrumentation's, else (per rollout) the
    active instrumentation's, else one in memory. Thread-safe."""

    def __init__(self, agent: str, instrumentation: Any = None):
        self.agent = agent
        self._lock = threading.Lock()
        self._given = Recording.into(instrumentation) if instrumentation is not None else None
        self._by_instrumentation: dict[int, tuple[Any, Recording]] = {}
        self._memory: Recording | None = None

    def current(self) -> Recording:
        if self._given is not None:
            return self._given
        from gepa_trace.collectors.instrument import active_instrumentation

        inst = active_instrumentation()
        with self._lock:
            if inst is not None and inst.active:
                # the instrumentation is kept beside its recording, so its id is not reused
                _inst, recording = self._by_instrumentation.get(id(inst), (None, None))
                if recording is None:
                    recording = Recording.into(inst)
                    self._by_instrumentation[id(inst)] = (inst, recording)
                return recording
            if self._memory is None:
                self._memory = Recording.in_memory(self.agent)
            return self._memory
