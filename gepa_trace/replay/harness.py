"""Agent replay: run the user's agent with a candidate's prompts on a recorded input.

The one way to run an agent in process and collect its per-component records: the
optimizer's agent replay, the demo's ``AgentEvaluator``, the tests and the benchmarks
all use ``AgentReplay``. Each rollout is a real run of the agent, traced as production
runs are and tagged with the optimization run, candidate and example (``gepa.run.id``
and friends on every span): into the store under ``gepa-trace optimize``, else in
memory (``replay.recording``). What the reflection sees of a rollout is read from that
rollout's own spans, with the same readers as production traces (``collectors.views.llm_view``):
for each component, its LLM calls (rendered messages and output), plus the errors and
failed tool calls of the trace and the metric's feedback.

A rollout whose agent raised, or whose metric raised or broke its contract
(``Score.checked`` against ``RolloutContext.score_range``), is a failed rollout: its
``error`` says which and why, its feedback is empty (an exception is never shown to the
reflection LM as the metric's verdict), and the optimizer retries it and never scores
it (``optimizer.failures``). Failed tool calls inside a run that finished are data
about that run, and stay in its feedback as trace errors (``with_trace_errors``).
The metric's ``trace`` argument is a ``RolloutTrace``.

The spans are taken as they end, by a span processor on our tracer provider, so a
rollout does not wait for the exporter; the exporter still writes them to the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gepa_trace.collectors.views import llm_view
from gepa_trace.conventions import derive
from gepa_trace.errors import BudgetExhausted, MetricContractError
from gepa_trace.lm.client import price
from gepa_trace.optimizer.failures import failed_rollout
from gepa_trace.optimizer.protocols import ComponentRecord, Example, Rollout, RolloutContext, Score
from gepa_trace.optimizer.rollouts import BuiltOnce
from gepa_trace.prompts import PromptSet
from gepa_trace.replay.cache import HIT_MARKER
from gepa_trace.replay.recording import Recordings

log = logging.getLogger(__name__)


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


def with_trace_errors(feedback: str, errors: list[str]) -> str:
    """The one rule for errors in feedback: the failed tool calls (and failed root) of a
    run that finished follow the metric's feedback, as ``| errors in the trace: ...``."""
    if not errors:
        return feedback
    return (feedback + " | errors in the trace: " + "; ".join(errors)).strip(" |")


@dataclass(frozen=True)
class RolloutTrace:
    """The ``trace`` argument of every metric, ``metric(example, output, trace)``: what
    the rollout's own spans say, the same for every evaluator (the optimizer's agent
    replay, the demo's ``AgentEvaluator``, the tests and the benchmarks).

    - ``trace_id``: the rollout's trace (32 hex); in the store when the rollout was
      recorded into one (``replay.recording``).
    - ``spans``: its finished spans, oldest first, as the store keeps them
      (``collectors.exporter.span_to_dict``: ``name``, ``span_id``, ``parent_span_id``,
      ``start_ns``, ``status_code``, ``attributes``, ...); read them with
      ``collectors.views`` as production traces are read.
    - ``records``: component -> its ``ComponentRecord``s in call order (rendered input
      messages, output, error), as the reflection reads them (``read_rollout``).
    - ``errors``: the failed tool calls (and a failed root) of the run, one line each.

    A metric called outside a rollout (by hand, on a recorded output) gets ``None``;
    every built-in metric accepts that.
    """

    trace_id: str
    spans: tuple[Mapping[str, Any], ...]
    records: Mapping[str, list[ComponentRecord]] = dataclasses.field(default_factory=dict)
    errors: tuple[str, ...] = ()


class AgentReplay:
    """An Evaluator that invokes ``build_agent(prompts)`` on each example's input.

    Never raises for one example: an agent or metric exception, or a metric value that
    breaks the contract, is a failed rollout (``error`` set, see the module docstring),
    never a score. Built agents are kept per prompt versions (a small LRU), since
    building one may be costly. The tokens and dollars of the agent's own LLM calls
    are read from its spans (priced from litellm's map) and reported on the Rollout;
    the engine charges them to the run's budget. ``cache`` (a ``ReplayCache``) answers
    the LLM calls of this evaluator's rollouts, and no others (``ReplayCache.serving``).

    ``instrumentation``: where rollouts are recorded (its store); None: the active
    instrumentation's, else in memory (``replay.recording``). ``config``: extra
    RunnableConfig for every run (its callbacks are kept; its metadata tags the trace).
    """

    def __init__(self, build_agent: Callable[[PromptSet], Any],
                 metric: Callable[[Example, Any, Any], float | Score], *, agent: str,
                 instrumentation: Any = None, keep_agents: int = 16, cache: Any = None,
                 config: Mapping[str, Any] | None = None):
        self.build_agent = build_agent
        self.cache = cache
        self.metric = metric
        self.agent = agent
        self.instrumentation = instrumentation
        self.config = dict(config or {})
        self.recordings = Recordings(agent, instrumentation)
        self._agents = BuiltOnce(build_agent, keep_agents)  # per prompt versions (PromptSet equality)

    def _runnable(self, prompts: PromptSet) -> Any:
        return self._agents.get(prompts, prompts)

    def _tags(self, example: Example, context: RolloutContext | None) -> dict[str, Any]:
        tags = dict(self.config.get("metadata") or {})
        if context is not None:
            tags.update({"gepa.run.id": context.run_id,
                         "gepa.candidate.id": context.candidate_id,
                         "gepa.example.id": example.id,
                         "gepa.rollout.purpose": context.purpose})
        return tags

    def evaluate(self, prompts: PromptSet, example: Example,
                 context: RolloutContext | None = None) -> Rollout:
        tags = self._tags(example, context)
        recording = self.recordings.current()
        config = {**self.config, "metadata": dict(tags),
                  "callbacks": [*(self.config.get("callbacks") or []), *recording.callbacks]}
        output: Any = None
        failure: Rollout | None = None
        run = recording.run(self.agent, dict(example.inputs), tags)
        serving = self.cache.serving() if self.cache is not None else contextlib.nullcontext()
        try:
            with serving, run:
                recording.spans.watch(run.trace_id)
                runnable = self._runnable(prompts)
                output = runnable.invoke(dict(example.inputs), config=config)
                run.set_outputs(output)
        except BudgetExhausted:
            recording.spans.take(run.trace_id)  # nobody reads them: the batch stops
            raise  # the run's budget, not this example: the engine stops the batch
        except Exception as exc:  # noqa: BLE001 - the agent failing on one input: an error
            failure = failed_rollout(exc, "the agent raised")
        spans = recording.spans.take(run.trace_id)
        reading = read_rollout(spans)
        score = Score(0.0)
        if failure is None:
            low, high = context.score_range if context is not None else (0.0, 1.0)
            trace = RolloutTrace(run.trace_id, tuple(sorted(spans, key=_started)),
                                 reading.records, tuple(reading.errors))
            try:
                score = Score.checked(self.metric(example, output, trace), low, high)
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
        return Rollout(score=score.score, feedback=with_trace_errors(score.feedback,
                                                                     reading.errors), **spent)


def _started(span: Mapping[str, Any]) -> int:
    return span["start_ns"]
