"""The read side of the store: runs of an agent, one trace's span tree, feedback
(components: ``store.components``).

Everything here returns plain dataclasses with a ``to_dict()`` that is exactly what
``--json`` prints, so the CLI, the replay layer (which builds examples from runs) and
tests read the store through one path.

Contracts shared by every function:
- ``store`` is a ``Store``, a URL, or ``None`` for the configured store (``open_store``).
- Times in arguments are epoch seconds; span times in results are nanoseconds, as stored,
  with ``start_time`` (epoch seconds) and ``duration_ms`` derived.
- A run is a root span (``parent_span_id IS NULL``); its agent is the root's ``agent``.
- Queries read spans through an index, never a scan of the table (production runs by
  time, with or without an agent, and LLM calls by component: revision 0007; an
  agent's traces and their LLM calls: revision 0008; the primary key's ``trace_id``;
  ``feedback.trace_id``), and never issue one query per run:
  feedback and span totals for a page of runs come from one query each.
  ``tests/test_store_scale.py`` checks the plans.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from typing import Any

from sqlalchemy import case, exists, func, select

from gepa_trace.errors import ConfigError, NotFoundError
from gepa_trace.store.engine import Store, open_store, safe_url
from gepa_trace.store.tables import FeedbackRow, PromptVersionRow, SpanRow
from gepa_trace.store.verdict import verdict

_SPANS = SpanRow.__table__
_FEEDBACK = FeedbackRow.__table__
_VERSIONS = PromptVersionRow.__table__

# SQLite refuses statements with too many bound parameters on old builds (999); staying
# well below keeps IN (...) lists portable without a temp table.
_IN_CHUNK = 500


# ---------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Feedback:
    """One feedback record on a trace (or on one span of it)."""

    id: int
    trace_id: str
    span_id: str | None
    name: str
    score: float | None
    label: str | None
    comment: str | None
    source: str
    created_at: float
    expected: str | None = None
    expected_field: str | None = None
    score_low: float | None = None  # the declared range of score (None: 0..1)
    score_high: float | None = None
    feedback_key: str | None = None
    replaced_by: int | None = None

    def to_dict(self) -> dict[str, Any]:
        # every field is a scalar: a flat copy is what asdict gives, at a tenth of the cost
        # (example loading makes one per feedback record)
        return {name: getattr(self, name) for name in _field_names(type(self))}


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    """The fields of a dataclass (a subclass of Feedback adds its own)."""
    return tuple(f.name for f in fields(cls))


def _mean_score(feedback: Sequence[Feedback]) -> float | None:
    """The run's score by the one rule of ``store.verdict``."""
    return verdict(feedback).score


@dataclass(frozen=True)
class Run:
    """One run of an agent: its root span, a preview (or all) of its input and output,
    span and token totals over the whole trace, and all feedback on the trace."""

    trace_id: str
    span_id: str
    agent: str | None
    name: str
    start_ns: int
    end_ns: int
    status: str
    status_message: str | None
    input: str | None
    output: str | None
    optimization_run_id: str | None
    span_count: int
    llm_calls: int
    input_tokens: int
    output_tokens: int
    feedback: tuple[Feedback, ...] = ()

    @property
    def start_time(self) -> float:
        return self.start_ns / 1e9

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def score(self) -> float | None:
        """The mean of the feedback scores (None when no feedback has a score)."""
        return _mean_score(self.feedback)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["feedback"] = [f.to_dict() for f in self.feedback]
        data.update(start_time=self.start_time, duration_ms=self.duration_ms,
                    score=self.score)
        return data


@dataclass(frozen=True)
class SpanNode:
    """One span of a trace, with its depth in the tree (roots have depth 0)."""

    span_id: str
    parent_span_id: str | None
    depth: int
    name: str
    kind: str
    span_type: str | None
    component: str | None
    prompt_version: str | None
    model: str | None
    start_ns: int
    end_ns: int
    status: str
    status_message: str | None
    input_tokens: int | None
    output_tokens: int | None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[Any] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration_ms"] = self.duration_ms
        return data


@dataclass(frozen=True)
class Trace:
    """All spans of one trace in depth-first order (children by start time), and its
    feedback. A span whose parent is not stored is shown as a root, after the real ones."""

    trace_id: str
    agent: str | None
    spans: tuple[SpanNode, ...]
    feedback: tuple[Feedback, ...] = ()

    @property
    def root(self) -> SpanNode:
        return self.spans[0]

    @property
    def input_tokens(self) -> int:
        return sum(s.input_tokens or 0 for s in self.spans)

    @property
    def output_tokens(self) -> int:
        return sum(s.output_tokens or 0 for s in self.spans)

    def to_dict(self) -> dict[str, Any]:
        return {"trace_id": self.trace_id, "agent": self.agent,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "score": _mean_score(self.feedback),
                "spans": [s.to_dict() for s in self.spans],
                "feedback": [f.to_dict() for f in self.feedback]}


# ---------------------------------------------------------------- helpers


def _loads(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _preview(value: Any, chars: int | None) -> str | None:
    """A one-line preview of ``value`` (whitespace collapsed), or all of it if chars is None."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if chars is None:
        return text
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: max(chars - 1, 0)] + "…"


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start:start + _IN_CHUNK]


def _feedback_row(row: Any) -> Feedback:
    return Feedback(id=row.id, trace_id=row.trace_id, span_id=row.span_id, name=row.name,
                    score=row.score, label=row.label, comment=row.comment, source=row.source,
                    created_at=row.created_at, expected=row.expected,
                    expected_field=row.expected_field, score_low=row.score_low,
                    score_high=row.score_high, feedback_key=row.feedback_key,
                    replaced_by=row.replaced_by)


def _ns(epoch_s: float) -> int:
    return round(epoch_s * 1e9)


# ---------------------------------------------------------------- feedback


def feedback_for_traces(store: Store | str | None,
                        trace_ids: Iterable[str]) -> dict[str, list[Feedback]]:
    """Feedback of each trace id (oldest first); every asked id is a key, maybe empty.

    One query per 500 ids, whatever their number.
    """
    store = open_store(store)
    ids = list(dict.fromkeys(trace_ids))
    found: dict[str, list[Feedback]] = {t: [] for t in ids}
    if not ids:
        return found
    with store.read() as conn:
        for chunk in _chunks(ids):
            rows = conn.execute(select(_FEEDBACK).where(_FEEDBACK.c.trace_id.in_(chunk))
                                .order_by(_FEEDBACK.c.created_at, _FEEDBACK.c.id)).all()
            for row in rows:
                found[row.trace_id].append(_feedback_row(row))
    return found


# ---------------------------------------------------------------- runs


def list_runs(store: Store | str | None = None, *, agent: str | None = None,
              since: float | None = None, until: float | None = None,
              only_with_feedback: bool = False, limit: int | None = 50,
              offset: int = 0, optimization_run_id: str | None = None,
              include_rollouts: bool = False, newest_first: bool = True,
              preview_chars: int | None = 200) -> list[Run]:
    """Runs (root spans) matching the filters, newest first unless ``newest_first=False``.

    - ``agent``: the root span's agent; ``None`` lists every agent.
    - ``since`` / ``until``: epoch seconds; a run is kept if since <= start < until.
    - ``only_with_feedback``: keep runs whose trace has at least one feedback record.
    - Rollouts made by the optimizer (root spans tagged ``gepa.run.id``) are left out
      unless ``include_rollouts`` is true or ``optimization_run_id`` picks one run's.
    - ``limit=None`` returns every match. ``preview_chars=None`` returns the full
      ``input.value`` / ``output.value`` of the root (what the replay layer wants);
      otherwise a one-line preview of that many characters.

    Three queries whatever the page size: the roots, their feedback, their span totals.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    store = open_store(store)
    s = _SPANS
    query = select(s.c.trace_id, s.c.span_id, s.c.agent, s.c.name, s.c.start_ns, s.c.end_ns,
                   s.c.status_code, s.c.status_message, s.c.attributes, s.c.run_id
                   ).where(s.c.parent_span_id.is_(None))
    if agent is not None:
        query = query.where(s.c.agent == agent)
    if since is not None:
        query = query.where(s.c.start_ns >= _ns(since))
    if until is not None:
        query = query.where(s.c.start_ns < _ns(until))
    if optimization_run_id is not None:
        query = query.where(s.c.run_id == optimization_run_id)
    elif not include_rollouts:
        query = query.where(s.c.run_id.is_(None))
    if only_with_feedback:
        query = query.where(exists().where(_FEEDBACK.c.trace_id == s.c.trace_id))
    order = s.c.start_ns.desc() if newest_first else s.c.start_ns.asc()
    query = query.order_by(order, s.c.trace_id, s.c.span_id)
    if limit is not None:
        query = query.limit(limit)
    if offset:
        query = query.offset(offset)
    with store.read() as conn:
        roots = conn.execute(query).all()
        return runs_of_roots(store, conn, roots, preview_chars)


def runs_of_roots(store: Store, conn: Any, roots: Sequence[Any],
                  preview_chars: int | None) -> list[Run]:
    """``Run``s of root-span rows (trace_id, span_id, agent, name, start_ns, end_ns,
    status_code, status_message, attributes, run_id), in their order, with their span
    totals (on ``conn``) and feedback: the one way a listing builds its runs."""
    trace_ids = list(dict.fromkeys(r.trace_id for r in roots))
    totals = _span_totals(conn, trace_ids)
    feedback = feedback_for_traces(store, trace_ids)
    runs = []
    for r in roots:
        attributes = _loads(r.attributes, {})
        count, llm_calls, tokens_in, tokens_out = totals.get(r.trace_id, (0, 0, 0, 0))
        runs.append(Run(
            trace_id=r.trace_id, span_id=r.span_id, agent=r.agent, name=r.name,
            start_ns=r.start_ns, end_ns=r.end_ns, status=r.status_code,
            status_message=r.status_message,
            input=_preview(attributes.get("input.value"), preview_chars),
            output=_preview(attributes.get("output.value"), preview_chars),
            optimization_run_id=r.run_id, span_count=count, llm_calls=llm_calls,
            input_tokens=tokens_in, output_tokens=tokens_out,
            feedback=tuple(feedback.get(r.trace_id, ()))))
    return runs


def _span_totals(conn, trace_ids: Sequence[str]) -> dict[str, tuple[int, int, int, int]]:
    """(spans, LLM calls, input tokens, output tokens) per trace, one GROUP BY per chunk."""
    s = _SPANS
    totals: dict[str, tuple[int, int, int, int]] = {}
    for chunk in _chunks(trace_ids):
        rows = conn.execute(
            select(s.c.trace_id, func.count(),
                   func.coalesce(func.sum(case((s.c.span_type == "llm", 1), else_=0)), 0),
                   func.coalesce(func.sum(s.c.input_tokens), 0),
                   func.coalesce(func.sum(s.c.output_tokens), 0))
            .where(s.c.trace_id.in_(chunk)).group_by(s.c.trace_id)).all()
        for trace_id, count, llm_calls, tokens_in, tokens_out in rows:
            totals[trace_id] = (int(count), int(llm_calls), int(tokens_in), int(tokens_out))
    return totals


# ---------------------------------------------------------------- one trace


def resolve_trace_id(store: Store | str | None, text: str) -> str:
    """The full trace id that ``text`` names: itself, or the one stored trace id that
    starts with it (at least 6 hex characters, as `git` takes hash prefixes).

    Raises ``NotFoundError`` when nothing matches, ``ConfigError`` when a prefix is
    ambiguous. A prefix is looked up as a range on the primary key, so it is indexed on
    both databases (LIKE would not be on PostgreSQL under a non-C collation).
    """
    store = open_store(store)
    wanted = text.strip().lower()
    if len(wanted) >= 32 or len(wanted) < 6 or any(c not in "0123456789abcdef" for c in wanted):
        return wanted
    with store.read() as conn:
        found = conn.execute(select(_SPANS.c.trace_id).distinct()
                             .where(_SPANS.c.trace_id >= wanted,
                                    _SPANS.c.trace_id < wanted + "g")
                             .order_by(_SPANS.c.trace_id).limit(3)).scalars().all()
    found = [t for t in found if t.startswith(wanted)]
    if not found:
        raise NotFoundError(f"no trace {wanted} in the store {safe_url(store.url)}")
    if len(found) > 1:
        listed = ", ".join(found[:2]) + (", ..." if len(found) > 2 else "")
        raise ConfigError(f"trace id prefix {wanted} is ambiguous ({listed}); "
                          "give more characters")
    return found[0]


def get_trace(store: Store | str | None, trace_id: str) -> Trace:
    """Every span of ``trace_id`` (or of the one trace whose id starts with it, see
    ``resolve_trace_id``) as a tree (depth-first, siblings by start time), plus the
    trace's feedback. Raises ``NotFoundError`` when no span has that trace id."""
    store = open_store(store)
    trace_id = resolve_trace_id(store, trace_id)
    with store.read() as conn:
        rows = conn.execute(select(_SPANS).where(_SPANS.c.trace_id == trace_id)
                            .order_by(_SPANS.c.start_ns, _SPANS.c.span_id)).all()
    if not rows:
        raise NotFoundError(f"no trace {trace_id} in the store {safe_url(store.url)}")
    by_id = {r.span_id: r for r in rows}
    children: dict[str | None, list[Any]] = defaultdict(list)
    tops = []
    for r in rows:  # rows are in start order, so children lists are too
        parent = r.parent_span_id
        if parent is not None and parent in by_id and parent != r.span_id:
            children[r.parent_span_id].append(r)
        else:
            tops.append(r)
    # True roots first, then orphans whose parent was never stored (a partial trace).
    tops.sort(key=lambda r: (r.parent_span_id is not None, r.start_ns, r.span_id))
    ordered: list[SpanNode] = []
    seen: set[str] = set()
    stack = [(r, 0) for r in reversed(tops)]
    while stack:  # iterative, so a deep trace cannot hit the recursion limit
        row, depth = stack.pop()
        if row.span_id in seen:
            continue
        seen.add(row.span_id)
        ordered.append(_node(row, depth))
        stack.extend((c, depth + 1) for c in reversed(children.get(row.span_id, [])))
    # Spans only reachable through a parent cycle (malformed input) are still shown.
    ordered.extend(_node(r, 0) for r in rows if r.span_id not in seen)
    feedback = feedback_for_traces(store, [trace_id])[trace_id]
    agent = next((r.agent for r in tops if r.agent), None)
    return Trace(trace_id=trace_id, agent=agent, spans=tuple(ordered), feedback=tuple(feedback))


def _node(row: Any, depth: int) -> SpanNode:
    return SpanNode(span_id=row.span_id, parent_span_id=row.parent_span_id, depth=depth,
                    name=row.name, kind=row.kind, span_type=row.span_type,
                    component=row.component, prompt_version=row.prompt_version,
                    model=row.model, start_ns=row.start_ns, end_ns=row.end_ns,
                    status=row.status_code, status_message=row.status_message,
                    input_tokens=row.input_tokens, output_tokens=row.output_tokens,
                    attributes=_loads(row.attributes, {}), events=_loads(row.events, []))


def trace_exists(store: Store | str | None, trace_id: str) -> bool:
    store = open_store(store)
    with store.read() as conn:
        return conn.execute(select(_SPANS.c.span_id).where(_SPANS.c.trace_id == trace_id)
                            .limit(1)).first() is not None


__all__ = [
    "Feedback",
    "Run",
    "SpanNode",
    "Trace",
    "feedback_for_traces",
    "get_trace",
    "list_runs",
    "resolve_trace_id",
    "trace_exists",
]
