"""Finding runs for a person browsing them: the filters of the web UI's traces list, and
keyset paging that stays fast however deep the page.

``search_runs`` returns the same ``Run`` objects as ``queries.list_runs`` (built by the
same helpers: one query for the page's roots, one for their feedback, one for their span
totals) and a cursor for the next page. Paging is by (start time, trace id) of the last
run shown, never by OFFSET, so page 1,000 costs what page 1 costs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, exists, func, or_, select

from gepa_trace.errors import ConfigError
from gepa_trace.store.engine import Store, open_store
from gepa_trace.store.queries import Run, _loads, _ns, _preview, _span_totals, feedback_for_traces
from gepa_trace.store.tables import FeedbackRow, SpanRow

_SPANS = SpanRow.__table__
_FEEDBACK = FeedbackRow.__table__

#: What the feedback filter accepts: any record, none, a score in the lower half of its
#: declared range (negative) or in the upper half (positive).
FEEDBACK_FILTERS = ("any", "none", "negative", "positive")


@dataclass(frozen=True)
class RunFilter:
    """Which runs to list. Every field left at its default filters nothing.

    ``feedback``: one of ``FEEDBACK_FILTERS`` (replaced records do not count);
    ``corrected``: some feedback carries an explicit correction (``expected``);
    ``errors``: some span of the trace has status ERROR; ``version``: some LLM call of
    the trace used a prompt version starting with it; ``text``: the run's input or
    output contains it (case-insensitive)."""

    agent: str | None = None
    since: float | None = None
    until: float | None = None
    feedback: str | None = None
    corrected: bool = False
    errors: bool = False
    version: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if self.feedback is not None and self.feedback not in FEEDBACK_FILTERS:
            raise ConfigError(f"feedback filter must be one of {', '.join(FEEDBACK_FILTERS)}, "
                              f"got {self.feedback!r}")


@dataclass(frozen=True)
class RunPage:
    runs: list[Run]
    next_cursor: str | None  # give it back as ``after`` for the next page; None: last page


def _cursor(run: Run) -> str:
    return f"{run.start_ns}.{run.trace_id}"


def _parse_cursor(text: str) -> tuple[int, str]:
    ns, _, trace_id = text.partition(".")
    if not ns.isdigit() or not trace_id:
        raise ConfigError(f"bad page cursor {text!r}")
    return int(ns), trace_id


def _normalized_score():
    """A feedback score mapped onto 0..1 by its declared range (0..1 when none)."""
    f = _FEEDBACK.c
    low = func.coalesce(f.score_low, 0.0)
    return (f.score - low) / (func.coalesce(f.score_high, 1.0) - low)


def _roots_query(filters: RunFilter, agent: str | None, after: str | None, limit: int):
    """Root spans of one agent (``None``: roots with no agent) matching ``filters``,
    newest first: each such query walks the (agent, parent, start) index."""
    s, f = _SPANS, _FEEDBACK
    query = (select(s.c.trace_id, s.c.span_id, s.c.agent, s.c.name, s.c.start_ns, s.c.end_ns,
                    s.c.status_code, s.c.status_message, s.c.attributes, s.c.run_id)
             .where(s.c.agent.is_(None) if agent is None else s.c.agent == agent,
                    s.c.parent_span_id.is_(None), s.c.run_id.is_(None)))
    if filters.since is not None:
        query = query.where(s.c.start_ns >= _ns(filters.since))
    if filters.until is not None:
        query = query.where(s.c.start_ns < _ns(filters.until))
    in_effect = and_(f.c.trace_id == s.c.trace_id, f.c.replaced_by.is_(None))
    if filters.feedback == "any":
        query = query.where(exists().where(in_effect))
    elif filters.feedback == "none":
        query = query.where(~exists().where(f.c.trace_id == s.c.trace_id))
    elif filters.feedback in ("negative", "positive"):
        half = _normalized_score() < 0.5 if filters.feedback == "negative" else (
            _normalized_score() >= 0.5)
        query = query.where(exists().where(in_effect, f.c.score.is_not(None), half))
    if filters.corrected:
        query = query.where(exists().where(in_effect, f.c.expected.is_not(None)))
    inner = _SPANS.alias("inner")
    if filters.errors:
        query = query.where(exists().where(inner.c.trace_id == s.c.trace_id,
                                           inner.c.status_code == "ERROR"))
    if filters.version:
        query = query.where(exists().where(inner.c.trace_id == s.c.trace_id,
                                           inner.c.prompt_version.startswith(filters.version)))
    if filters.text:
        needle = filters.text.lower().replace("\\", "\\\\").replace("%", "\\%").replace(
            "_", "\\_")
        query = query.where(func.lower(s.c.attributes).like(f"%{needle}%", escape="\\"))
    if after:
        ns, trace_id = _parse_cursor(after)
        query = query.where(or_(s.c.start_ns < ns,
                                and_(s.c.start_ns == ns, s.c.trace_id > trace_id)))
    return query.order_by(s.c.start_ns.desc(), s.c.trace_id).limit(limit)


def search_runs(store: Store | str | None, filters: RunFilter = RunFilter(), *,
                after: str | None = None, limit: int = 50,
                preview_chars: int | None = 160) -> RunPage:
    """Production runs (not the optimizer's rollouts) matching ``filters``, newest first,
    ``limit`` at a time, starting after the cursor ``after`` (from the previous page).

    Without an agent, one indexed query per agent (``agents_with_runs``) and one for
    roots with no agent, merged: the index leads with the agent, so a query over all
    agents ordered by time alone would read every span."""
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    store = open_store(store)
    with store.read() as conn:
        agents: list[str | None] = ([filters.agent] if filters.agent
                                    else [*_agents(conn), None])
        roots = [row for agent in agents
                 for row in conn.execute(_roots_query(filters, agent, after, limit + 1))]
        roots.sort(key=lambda r: (-r.start_ns, r.trace_id))
        more = len(roots) > limit
        roots = roots[:limit]
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
    return RunPage(runs, _cursor(runs[-1]) if more and runs else None)


def _agents(conn) -> list[str]:
    """Agents that have root spans, by a skip scan of the (agent, parent, start) index:
    one indexed lookup per agent, however many spans each has."""
    s = _SPANS
    found: list[str] = []
    while True:
        query = select(s.c.agent).where(s.c.parent_span_id.is_(None), s.c.agent.is_not(None))
        if found:
            query = query.where(s.c.agent > found[-1])
        agent = conn.execute(query.order_by(s.c.agent).limit(1)).scalar()
        if agent is None:
            return found
        found.append(agent)


def agents_with_runs(store: Store | str | None) -> list[str]:
    """The agents that have recorded runs, sorted."""
    store = open_store(store)
    with store.read() as conn:
        return _agents(conn)


__all__ = ["FEEDBACK_FILTERS", "RunFilter", "RunPage", "agents_with_runs", "search_runs"]
