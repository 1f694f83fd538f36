"""Log-only replay: optimize from the recorded calls alone, with no entry point.

Each component's recorded LLM calls in an example's trace are re-rendered with the
candidate's template and the recorded variables, sent to the recorded model (or a
given task LM), and scored by an LLM judge whose evidence includes the run's production
feedback. A call whose template version is the recorded one is not re-sent: the
recorded output is its answer. Judgements are memoized per (call, version), so an
unchanged component is never re-judged when another component changes.

It cannot replay what a changed output would have done downstream; it scores each
component's call on its own. That is the price of needing no entry point.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select

from gepa_trace.collectors.views import llm_view
from gepa_trace.errors import BudgetExhausted
from gepa_trace.optimizer.protocols import ComponentRecord, Example, Rollout, RolloutContext, Score
from gepa_trace.prompts import PromptSet, to_chat_prompt
from gepa_trace.replay.harness import render_messages
from gepa_trace.replay.metrics import Judge
from gepa_trace.store import SpanRow, Store

_SPANS = SpanRow.__table__
_ROLE = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


@dataclass(frozen=True)
class RecordedCall:
    """One recorded LLM call of a component, with what is needed to re-render it."""

    span_id: str
    trace_id: str
    component: str
    version: str | None
    model: str | None
    variables: Mapping[str, Any]
    messages: tuple[Mapping[str, Any], ...]
    output: str


def load_recorded_calls(store: Store, agent: str,
                        trace_ids: list[str]) -> dict[str, list[RecordedCall]]:
    """The re-renderable LLM calls of the given production traces, by trace id."""
    out: dict[str, list[RecordedCall]] = {t: [] for t in trace_ids}
    with store.read() as conn:
        for start in range(0, len(trace_ids), 500):
            chunk = trace_ids[start:start + 500]
            rows = conn.execute(
                select(_SPANS.c.trace_id, _SPANS.c.span_id, _SPANS.c.component,
                       _SPANS.c.prompt_version, _SPANS.c.attributes, _SPANS.c.start_ns)
                .where(and_(_SPANS.c.trace_id.in_(chunk), _SPANS.c.span_type == "llm",
                            _SPANS.c.agent == agent, _SPANS.c.component.isnot(None),
                            # its version is not its template's: what it "recorded" is a lie
                            _SPANS.c.prompt_flag.is_(None)))
                .order_by(_SPANS.c.start_ns)).all()
            for row in rows:
                view = llm_view(json.loads(row.attributes))
                if view.variables is None or not view.output_messages:
                    continue  # nothing to re-render with, or nothing recorded to compare
                out[row.trace_id].append(RecordedCall(
                    span_id=row.span_id, trace_id=row.trace_id, component=row.component,
                    version=row.prompt_version, model=view.model, variables=view.variables,
                    messages=tuple(view.input_messages), output=view.output_text))
    return out


def render(prompts: PromptSet, component: str, variables: Mapping[str, Any]) -> list[dict[str, str]]:
    """The messages the candidate's template of ``component`` makes from ``variables``."""
    # format_messages, not invoke: rendering is bookkeeping, not a run to be traced
    messages = to_chat_prompt(prompts.messages(component)).format_messages(**dict(variables))
    return [{"role": _ROLE.get(m.type, "user"), "content": str(m.content)} for m in messages]


class LogOnlyReplay:
    """An Evaluator over recorded calls (see the module docstring)."""

    def __init__(self, store: Store, agent: str, examples: list[Example], *,
                 judge_lm: Callable[[str], str], lm_for_model: Callable[[str | None], Any],
                 rubric: str | None = None):
        self.calls = load_recorded_calls(store, agent, [e.trace_id or e.id for e in examples])
        self.judge = Judge(judge_lm, rubric) if rubric else Judge(judge_lm)
        self.lm_for_model = lm_for_model
        self._memo: dict[tuple[str, str], tuple[str, Score, int]] = {}
        self._lock = threading.Lock()

    def replayable(self) -> int:
        return sum(len(v) for v in self.calls.values())

    def _judged(self, call: RecordedCall, prompts: PromptSet,
                example: Example) -> tuple[str, Score, int, str]:
        """(output, judgement, task-model calls made, rendered input) of one recorded
        call (the judge's calls are the metric's: its LM counts them as role judge)."""
        version = prompts.versions()[call.component]
        key = (call.span_id, version)
        if version == call.version:
            messages = [dict(m) for m in call.messages]
        else:
            messages = render(prompts, call.component, call.variables)
        with self._lock:
            cached = self._memo.get(key)
        if cached is not None:
            return cached[0], cached[1], 0, render_messages(messages)
        calls = 0
        if version == call.version:
            output = call.output  # the recorded answer of the recorded prompt
        else:
            output = self.lm_for_model(call.model).complete(messages).text
            calls += 1
        judged_example = Example(id=example.id, inputs={"component": call.component,
                                                        "messages": render_messages(messages)},
                                 expected=example.expected, output=call.output,
                                 feedback=example.feedback)
        verdict = self.judge(judged_example, output)
        with self._lock:
            self._memo[key] = (output, verdict, calls)
        return output, verdict, calls, render_messages(messages)

    def can_replay(self, example: Example) -> bool:
        """Whether a recorded call of this run can be re-rendered (its template
        variables were recorded); one that cannot is no example for log-only replay."""
        return bool(self.calls.get(example.trace_id or example.id))

    def evaluate(self, prompts: PromptSet, example: Example,
                 context: RolloutContext) -> Rollout:
        calls = [c for c in self.calls.get(example.trace_id or example.id, [])
                 if c.component in prompts]
        if not calls:
            return Rollout(score=0.0, feedback="no recorded call of this run can be "
                           "re-rendered (no template variables were recorded)")
        records: dict[str, list[ComponentRecord]] = {}
        scores, reasons, llm_calls = [], [], 0
        for call in calls:
            try:
                output, verdict, made, rendered = self._judged(call, prompts, example)
            except BudgetExhausted:
                raise
            except Exception as exc:  # noqa: BLE001 - a model or judge failing: an error, not a 0
                from gepa_trace.optimizer.failures import failed_rollout

                return failed_rollout(exc, f"log-only replay of {call.component} failed:")
            llm_calls += made
            scores.append(verdict.score)
            reasons.append(f"{call.component}: {verdict.feedback}")
            records.setdefault(call.component, []).append(ComponentRecord(
                component=call.component, inputs=rendered, output=output,
                extra={"judge": verdict.feedback, "judge_score": verdict.score,
                       "recorded_output": call.output}))
        return Rollout(score=sum(scores) / len(scores), feedback="; ".join(reasons),
                       output=None, records=records, llm_calls=llm_calls, metered=True)


def log_only_evaluator(store: Store, agent: str, examples: list[Example], judge: Any,
                       budget: Any, settings: Any) -> LogOnlyReplay:
    """The log-only evaluator of ``gepa_trace.optimize`` (``settings``: its
    ``ReplaySettings``), after the preflight has called each model it will use: the
    recorded calls' models, or ``settings.task_lm`` (the judge is checked with the
    reflection LM)."""
    from gepa_trace.errors import ConfigError
    from gepa_trace.lm import LM
    from gepa_trace.replay import preflight

    if judge is None:
        raise ConfigError("log-only replay (no --entrypoint) needs a judge: give "
                          "--judge-lm or --task-lm")
    task_lms: dict[str | None, Any] = {}

    def lm_for_model(model: str | None):
        name = settings.task_lm or model
        if name is None:
            raise ConfigError("a recorded call has no model; give --task-lm")
        if name not in task_lms:
            base = settings.task_lm_base if settings.task_lm else None
            try:
                task_lms[name] = LM(name, budget=budget, role="task", api_base=base)
            except ConfigError as exc:
                raise preflight.failed(f"the task LM {name!r}: {exc}") from exc
        return task_lms[name]

    evaluator = LogOnlyReplay(store, agent, examples, judge_lm=judge,
                              lm_for_model=lm_for_model, rubric=settings.rubric)
    models = {c.model for calls in evaluator.calls.values() for c in calls if c.model}
    if settings.task_lm:
        models = {settings.task_lm}
    preflight.check_models({f"task LM for recorded model {m}": lm_for_model(m)
                            for m in sorted(models)})
    return evaluator
