"""Finding runs for a person browsing them: the filters of the web UI's traces list, and
keyset paging that stays fast however deep the page.

``search_runs`` returns the same ``Run`` objects as ``queries.list_runs`` (built by the
same helpers: one query for the page's roots, one for their feedback, one for their span
totals) and a cursor for the next page. Paging is by (start time, trace id) of the last
run shown, never by OFFSET, so page 1,000 costs what page 1 costs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, exists, func, literal_column, or_, select

from gepa_trace.errors import ConfigError
from gepa_trace.store.engine import Store, open_store
from gepa_trace.store.queries import Run, _ns, runs_of_roots
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
    #: A text search reads at most ``TEXT_WINDOW`` runs per agent and page: when it
    #: stopped there, the start time (epoch seconds) it searched back to; ``next_cursor``
    #: then continues the search with older runs.
    searched_to: float | None = None


#: How many runs (per agent) one page of a text search reads at most: a text search
#: cannot use an index, so it is bounded to stay fast on a large store.
TEXT_WINDOW = 5000


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


def _roots_query(filters: RunFilter, agent: str | None, after: str | None, limit: int,
                 *, text: bool = True):
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
    if filters.errors:  # matches the partial index ix_spans_error
        query = query.where(exists().where(inner.c.trace_id == s.c.trace_id,
                                           inner.c.status_code == literal_column("'ERROR'")))
    if filters.version:
        query = query.where(exists().where(inner.c.trace_id == s.c.trace_id,
                                           inner.c.prompt_version.startswith(filters.version)))
    if text and filters.text:
        needle = filters.text.lower().replace("\\", "\\\\").replace("%", "\\%").replace(
            "_", "\\_")
        query = query.where(func.lower(s.c.attributes).like(f"%{needle}%", escape="\\"))
    if after:
        ns, trace_id = _parse_cursor(after)
        # start_ns <= ns bounds the index range; the OR picks the rows after the cursor
        query = query.where(s.c.start_ns <= ns,
                            or_(s.c.start_ns < ns,
                                and_(s.c.start_ns == ns, s.c.trace_id > trace_id)))
    # Ordered by the whole index (agent and parent are fixed here): PostgreSQL does not
    # count "parent_span_id IS NULL" as fixing the column, so ordering by start time
    # alone would sort every root of the agent instead of reading the index backwards.
    return query.order_by(s.c.agent.desc(), s.c.parent_span_id.desc(), s.c.start_ns.desc(),
                          s.c.trace_id).limit(limit)


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
        boundary = None  # the sort key a bounded text search read down to
        roots = []
        for agent in agents:
            if filters.text:
                window = _roots_query(filters, agent, after, TEXT_WINDOW, text=False)
                last = conn.execute(window.with_only_columns(_SPANS.c.start_ns,
                                                             _SPANS.c.trace_id)
                                    .offset(TEXT_WINDOW - 1).limit(1)).first()
                if last is not None and (boundary is None or
                                         (-last[0], last[1]) < boundary):
                    boundary = (-last[0], last[1])
                query = _roots_query(filters, agent, after, limit + 1)
                query = query.where(_SPANS.c.start_ns >= (last[0] if last else 0))
            else:
                query = _roots_query(filters, agent, after, limit + 1)
            roots += conn.execute(query).all()
        roots.sort(key=lambda r: (-r.start_ns, r.trace_id))
        if boundary is not None:  # below it, some agent's runs were not read
            roots = [r for r in roots if (-r.start_ns, r.trace_id) <= boundary]
        more = len(roots) > limit
        runs = runs_of_roots(store, conn, roots[:limit], preview_chars)
    if more or boundary is None:
        return RunPage(runs, _cursor(runs[-1]) if more and runs else None)
    # The window ran out before the page filled: continue below the boundary.
    ns, trace_id = -boundary[0], boundary[1]
    return RunPage(runs, f"{ns}.{trace_id}", searched_to=ns / 1e9)


def _agents(conn) -> list[str]:
    """Agents that have root spans, by a skip scan of the (agent, parent, start) index:
    two indexed lookups per agent, however many spans each has."""
    s = _SPANS
    found: list[str] = []
    last = None
    while True:
        # The next agent of any span, then whether it has a root: asking for both at
        # once would walk every child span of an agent on PostgreSQL (NULLs sort last).
        query = select(s.c.agent).where(s.c.agent.is_not(None))
        if last is not None:
            query = query.where(s.c.agent > last)
        last = conn.execute(query.order_by(s.c.agent).limit(1)).scalar()
        if last is None:
            return found
        if conn.execute(select(s.c.span_id).where(s.c.agent == last,
                                                  s.c.parent_span_id.is_(None))
                        .limit(1)).first() is not None:
            found.append(last)


def agents_with_runs(store: Store | str | None) -> list[str]:
    """The agents that have recorded runs, sorted."""
    store = open_store(store)
    with store.read() as conn:
        return _agents(conn)


__all__ = ["FEEDBACK_FILTERS", "RunFilter", "RunPage", "agents_with_runs", "search_runs"]
