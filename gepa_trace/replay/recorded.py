"""Recorded production runs as rollouts that cost nothing.

Every example is a recorded production run, and the store holds what that run did: the
prompt version each component's LLM calls carried, their rendered messages and outputs,
the run's output. When a candidate's prompts are exactly the versions a recorded run
carried, a rollout of that candidate on that example would re-run what production
already ran (with the replay cache, call for call). So the optimizer reads it instead
(``RecordedEvidence``): the metric scores the recorded output, with the recorded trace
as its ``trace`` argument, and the per-component records come from the recorded spans,
as a rollout's come from its own (``harness.read_rollout``). It spends no rollout of the
budget; the seed, which is what production ran, is scored on validation and on its
minibatches this way.

A run is covered only when it can stand for a rollout:

- every LLM call of a component of the candidate carried that component's version, and
  at least one such call was recorded;
- none of its calls is flagged inconsistent (a version that does not hash to its
  template, ``replay.trust``: a forged span must not stand for a version);
- its root finished without an error and recorded an output;
- when the optimization names its task model, every LLM call of the run used that model
  (a run of another model says nothing about this one).

A covered run the metric cannot score (it raised or broke its contract) is run live
instead, so an error is never read as a score.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import select

from gepa_trace.errors import MetricContractError
from gepa_trace.optimizer.protocols import Example, Rollout, RolloutContext, Score
from gepa_trace.prompts import PromptSet
from gepa_trace.replay.harness import RolloutTrace, read_rollout, with_trace_errors
from gepa_trace.store import SpanRow, Store

_SPANS = SpanRow.__table__
_CHUNK = 500


class RecordedRuns:
    """``RecordedEvidence`` over an agent's recorded runs in ``store`` (see the module
    docstring). ``task_lm``: the model the optimization runs the agent with (None: the
    agent's own, not checked)."""

    def __init__(self, store: Store, examples: Sequence[Example],
                 metric: Callable[[Example, Any, Any], Any], *, task_lm: str | None = None):
        self.store = store
        self.metric = metric
        self.task_lm = task_lm.lower() if task_lm else None
        self._carried = self._read_versions([e.trace_id for e in examples
                                             if e.trace_id and e.output is not None])

    def _read_versions(self, trace_ids: list[str]) -> dict[str, dict[str, str]]:
        """trace id -> {component: the one version all its calls carried}, for the runs
        that can stand for a rollout (module docstring). Read by trace id alone and
        filtered here: a filter on span_type would make SQLite scan by that index
        (``store.prompt_links`` says the same)."""
        seen: dict[str, dict[str, set]] = {}
        spoiled: set[str] = set()
        with self.store.read() as conn:
            for start in range(0, len(trace_ids), _CHUNK):
                chunk = trace_ids[start:start + _CHUNK]
                rows = conn.execute(
                    select(_SPANS.c.trace_id, _SPANS.c.parent_span_id, _SPANS.c.span_type,
                           _SPANS.c.component, _SPANS.c.prompt_version, _SPANS.c.model,
                           _SPANS.c.prompt_flag, _SPANS.c.status_code, _SPANS.c.run_id)
                    .where(_SPANS.c.trace_id.in_(chunk))).all()
                for row in rows:
                    if row.run_id is not None or (row.parent_span_id is not None
                                                  and row.span_type != "llm"):
                        continue
                    if row.parent_span_id is None:
                        if row.status_code == "ERROR":
                            spoiled.add(row.trace_id)
                        continue
                    if row.prompt_flag is not None or (
                            self.task_lm and (row.model or "").lower() != self.task_lm):
                        spoiled.add(row.trace_id)
                    if row.component:
                        seen.setdefault(row.trace_id, {}).setdefault(
                            row.component, set()).add(row.prompt_version)
        return {t: {c: next(iter(v)) for c, v in by.items()}
                for t, by in seen.items()
                if t not in spoiled and all(len(v) == 1 and None not in v
                                            for v in by.values())}

    def covers(self, prompts: PromptSet, example: Example) -> bool:
        carried = self._carried.get(example.trace_id or "")
        if not carried:
            return False
        versions = prompts.versions()
        return all(versions.get(c) == v for c, v in carried.items())

    def rollout(self, prompts: PromptSet, example: Example,
                context: RolloutContext) -> Rollout | None:
        if not self.covers(prompts, example):
            return None
        # not kept: the engine caches the evaluation, so a pair is read once per run
        with self.store.read() as conn:
            rows = conn.execute(select(_SPANS).where(_SPANS.c.trace_id == example.trace_id)
                                .order_by(_SPANS.c.start_ns)).all()
        spans = [_span_dict(row._mapping) for row in rows]
        reading = read_rollout(spans)
        trace = RolloutTrace(example.trace_id, tuple(spans), reading.records,
                             tuple(reading.errors))
        try:
            score = Score.checked(self.metric(example, example.output, trace),
                                  *context.score_range)
        except MetricContractError:
            return None
        return Rollout(score=score.score,
                       feedback=with_trace_errors(score.feedback, reading.errors),
                       output=example.output, records=reading.records,
                       trace_id=example.trace_id, recorded=True)


def _span_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored span as the span dict rollouts are read from (``read_rollout``)."""
    out = dict(row)
    for key, empty in (("attributes", {}), ("resource", {}), ("events", [])):
        value = out.get(key)
        out[key] = json.loads(value) if isinstance(value, str) and value else empty
    return out
