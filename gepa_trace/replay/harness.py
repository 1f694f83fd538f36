"""Agent replay: run the user's agent with a candidate's prompts on a recorded input.

Each rollout is a real run of the agent, traced into the same store as production and
tagged with the optimization run, candidate and example (``gepa.run.id`` and friends on
every span). What the reflection sees of a rollout is read from that rollout's own
spans, with the same readers as production traces (``collectors.views.llm_view``):
for each component, its LLM calls (rendered messages and output), plus the errors and
failed tool calls of the trace and the metric's feedback.

A rollout whose agent raised, or whose metric raised or broke its contract
(``Score.checked`` against ``RolloutContext.score_range``), is a failed rollout: its
``error`` says which and why, its feedback is empty (an exception is never shown to the
reflection LM as the metric's verdict), and the optimizer retries it and never scores
it (``optimizer.failures``). Failed tool calls inside a run that finished are data
about that run, and stay in its feedback as trace errors.

The spans are taken as they end, by a span processor on our tracer provider, so a
rollout does not wait for the exporter; the exporter still writes them to the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from gepa_trace.collectors.exporter import span_to_dict
from gepa_trace.collectors.views import llm_view
from gepa_trace.conventions import derive
from gepa_trace.errors import BudgetExhausted, MetricContractError
from gepa_trace.lm.client import price
from gepa_trace.optimizer.failures import failed_rollout
from gepa_trace.optimizer.protocols import ComponentRecord, Example, Rollout, RolloutContext, Score
from gepa_trace.optimizer.rollouts import BuiltOnce
from gepa_trace.prompts import PromptSet
from gepa_trace.replay.cache import HIT_MARKER

log = logging.getLogger(__name__)


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


def render_messages(messages: list[dict[str, Any]]) -> str:
    """Messages as the reflection LM reads them: one ``[role]`` block each."""
    parts = []
    for msg in messages:
        text = msg.get("content") or ""
        calls = msg.get("tool_calls")
        if calls:
            text += "".join(f"\n(tool call {c.get('name')}({c.get('arguments')}))" for c in calls)
        parts.append(f"[{msg.get('role', 'user')}]\n{text}")
    return "\n\n".join(parts)


@dataclass
class TraceReading:
    """What a rollout's spans say: per-component records, errors, LLM spans and tokens."""

    records: dict[str, list[ComponentRecord]]
    errors: list[str]
    llm_calls: int  # sent to a model
    cache_hits: int  # answered by the replay cache
    tokens: int
    cost_usd: float = 0.0


def read_rollout(spans: list[dict[str, Any]]) -> TraceReading:
    """Per-component records and trace errors from one rollout's span dicts."""
    records: dict[str, list[ComponentRecord]] = {}
    errors: list[str] = []
    llm_calls = cache_hits = tokens = 0
    cost = 0.0
    for span in sorted(spans, key=lambda s: s["start_ns"]):
        attributes = span.get("attributes") or {}
        derived = derive(attributes, name=span.get("name", ""), resource=span.get("resource"))
        failed = span.get("status_code") == "ERROR"
        message = span.get("status_message") or ""
        if failed and derived["span_type"] in ("tool", "retriever"):
            errors.append(f"tool {attributes.get('tool.name') or span.get('name')!r} "
                          f"failed: {message}".rstrip(": "))
        elif failed and span.get("parent_span_id") is None:
            errors.append(f"the run failed: {message}".rstrip(": "))
        if derived["span_type"] != "llm":
            continue
        view = llm_view(attributes)
        if attributes.get(HIT_MARKER):
            cache_hits += 1
        else:
            llm_calls += 1
        tokens += (view.tokens.input or 0) + (view.tokens.output or 0)
        if view.model and (view.tokens.input or view.tokens.output):
            cost += price(view.model, view.tokens.input or 0, view.tokens.output or 0) or 0.0
        component = derived["component"]
        if not component:
            continue
        records.setdefault(component, []).append(ComponentRecord(
            component=component, inputs=render_messages(view.input_messages),
            output=view.output_text, error=message if failed else None,
            extra={"model": view.model, "span_id": span["span_id"]}))
    if errors:
        for recs in records.values():
            for rec in recs:
                rec.extra["trace_errors"] = list(errors)
    return TraceReading(records, errors, llm_calls, cache_hits, tokens, cost)


@dataclass(frozen=True)
class RolloutTrace:
    """The ``trace`` argument a metric receives: the rollout's trace id and spans."""

    trace_id: str
    spans: tuple[Mapping[str, Any], ...]


class AgentReplay:
    """An Evaluator that invokes ``build_agent(prompts)`` on each example's input.

    Never raises for one example: an agent or metric exception, or a metric value that
    breaks the contract, is a failed rollout (``error`` set, see the module docstring),
    never a score. Built agents are kept per prompt versions (a small LRU), since
    building one may be costly. The tokens and dollars of the agent's own LLM calls
    are read from its spans (priced from litellm's map) and reported on the Rollout;
    the engine charges them to the run's budget. ``cache`` (a ``ReplayCache``) answers
    the LLM calls of this evaluator's rollouts, and no others (``ReplayCache.serving``).
    """

    def __init__(self, build_agent: Callable[[PromptSet], Any],
                 metric: Callable[[Example, Any, Any], float | Score], *, agent: str,
                 instrumentation: Any, keep_agents: int = 16, cache: Any = None):
        self.build_agent = build_agent
        self.cache = cache
        self.metric = metric
        self.agent = agent
        self.instrumentation = instrumentation
        self.spans = RolloutSpans()
        instrumentation.tracer_provider.add_span_processor(self.spans)
        self._agents = BuiltOnce(build_agent, keep_agents)  # per prompt versions (PromptSet equality)

    def _runnable(self, prompts: PromptSet) -> Any:
        return self._agents.get(prompts, prompts)

    def evaluate(self, prompts: PromptSet, example: Example,
                 context: RolloutContext) -> Rollout:
        from gepa_trace.collectors.instrument import agent_run

        tags = {"gepa.run.id": context.run_id, "gepa.candidate.id": context.candidate_id,
                "gepa.example.id": example.id, "gepa.rollout.purpose": context.purpose}
        output: Any = None
        failure: Rollout | None = None
        run = agent_run(self.agent, inputs=dict(example.inputs), metadata=tags)
        serving = self.cache.serving() if self.cache is not None else contextlib.nullcontext()
        try:
            with serving, run:
                self.spans.watch(run.trace_id)
                runnable = self._runnable(prompts)
                output = runnable.invoke(dict(example.inputs), config={"metadata": dict(tags)})
                run.set_outputs(output)
        except BudgetExhausted:
            raise  # the run's budget, not this example: the engine stops the batch
        except Exception as exc:  # noqa: BLE001 - the agent failing on one input: an error
            failure = failed_rollout(exc, "the agent raised")
        spans = self.spans.take(run.trace_id)
        reading = read_rollout(spans)
        score = Score(0.0)
        if failure is None:
            low, high = context.score_range if context is not None else (0.0, 1.0)
            try:
                value = self.metric(example, output, RolloutTrace(run.trace_id, tuple(spans)))
                score = Score.checked(value, low, high)
            except BudgetExhausted:
                raise  # a judge metric's LLM call found the budget spent
            except MetricContractError as exc:
                failure = failed_rollout(exc)
            except Exception as exc:  # noqa: BLE001 - the metric's bug is not the agent's score
                failure = failed_rollout(exc, "the metric raised")
        spent = {"output": output, "records": reading.records, "trace_id": run.trace_id,
                 "llm_calls": reading.llm_calls, "cache_hits": reading.cache_hits,
                 "tokens": reading.tokens, "cost_usd": reading.cost_usd}
        if failure is not None:
            return dataclasses.replace(failure, **spent)
        feedback = score.feedback
        if reading.errors:
            feedback = (feedback + " | errors in the trace: " + "; ".join(reading.errors)).strip(" |")
        return Rollout(score=score.score, feedback=feedback, **spent)
