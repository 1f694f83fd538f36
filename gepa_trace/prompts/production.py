"""How each prompt version did in production: what ``gepa-trace versions`` prints.

A version's production runs are the agent's recorded runs (root spans not made by the
optimizer) in which an LLM call of that component carried that version. For each
version: how many runs, how many had feedback, the mean feedback score with a 95%
confidence interval (each run's score is its verdict, ``store.verdict``: one rule for
every reader of feedback), cost and latency per run, when it was first and last seen,
which optimization run produced it and which aliases serve it now.

Spans flagged ``inconsistent`` (their declared version is not the hash of their
template, ``store.spans``) are not counted for the version they claim: a forged span
must not vote for a version.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Select, func, select

from gepa_trace.store import Store, open_store
from gepa_trace.store.queries import feedback_for_traces
from gepa_trace.store.tables import PromptAliasRow, PromptVersionRow, SpanRow
from gepa_trace.store.verdict import verdict

_SPANS = SpanRow.__table__
_VERSIONS = PromptVersionRow.__table__
_ALIASES = PromptAliasRow.__table__

_Z95 = 1.959964


@dataclass(frozen=True)
class Interval:
    """A mean score with its 95% confidence interval (None bounds with no score)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int


def mean_interval(values: Sequence[float]) -> Interval:
    """The mean of ``values`` (scores in 0..1) and its 95% Wilson interval.

    A score in 0..1 with mean p has a variance of at most p(1-p), that of a thumbs
    up/down, so the Wilson interval for a proportion covers any mix of scores at least
    as well. Unlike the t interval it stays honest where it matters most: 12 thumbs up
    out of 12 give [0.76, 1.00], not [1, 1]."""
    n = len(values)
    if n == 0:
        return Interval(None, None, None, 0)
    p = statistics.fmean(values)
    z2 = _Z95 * _Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


@dataclass(frozen=True)
class VersionFigures:
    """One prompt version's production figures (times in epoch seconds)."""

    component: str
    version: str | None
    runs: int
    runs_with_feedback: int
    score: Interval
    cost_per_run_usd: float | None  # None when a model of its runs has no known price
    latency_ms_mean: float
    latency_ms_p50: float
    first_seen: float
    last_seen: float
    origin: str | None = None  # observed | optimization | file
    produced_by_run: str | None = None
    produced_by_candidate: int | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def feedback_share(self) -> float:
        return self.runs_with_feedback / self.runs if self.runs else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["aliases"] = list(self.aliases)
        data["feedback_share"] = self.feedback_share
        return data


def production_runs(agent: str | None, *columns: Any, since: float | None = None,
                    until: float | None = None) -> Select:
    """``columns`` (default: trace_id) of the root spans of ``agent``'s (every agent's:
    None) production runs, the optimizer's rollouts left out, started in [since, until)."""
    s = _SPANS
    query = select(*(columns or (s.c.trace_id,))).where(s.c.parent_span_id.is_(None),
                                                        s.c.run_id.is_(None))
    if agent is not None:
        query = query.where(s.c.agent == agent)
    if since is not None:
        query = query.where(s.c.start_ns >= round(since * 1e9))
    if until is not None:
        query = query.where(s.c.start_ns < round(until * 1e9))
    return query


def versions_carried(runs: Select, component: str | None = None) -> Select:
    """(trace_id, component, prompt_version, first and last start_ns) of the LLM calls
    of ``runs`` (a ``production_runs`` query), per run and version; calls flagged
    inconsistent left out (a forged span must not vote for a version)."""
    s = _SPANS
    query = (select(s.c.trace_id, s.c.component, s.c.prompt_version,
                    func.min(s.c.start_ns), func.max(s.c.start_ns))
             .where(s.c.trace_id.in_(select(runs.subquery().c.trace_id)),
                    s.c.component.is_not(None), s.c.span_type == "llm",
                    s.c.prompt_flag.is_(None))
             .group_by(s.c.trace_id, s.c.component, s.c.prompt_version))
    return query if component is None else query.where(s.c.component == component)


def run_scores(store: Store, trace_ids: Iterable[str],
               weights: dict[str, float] | None = None) -> dict[str, float | None]:
    """Each run's score: the verdict of its feedback (``store.verdict``), None unrated."""
    return {t: verdict(records, weights=weights).score if records else None
            for t, records in feedback_for_traces(store, trace_ids).items()}


def version_figures(store: Store | str | None, agent: str | None, *,
                    component: str | None = None,
                    since: float | None = None, until: float | None = None,
                    weights: dict[str, float] | None = None) -> list[VersionFigures]:
    """Every prompt version of ``agent``'s (every agent's: None) production runs started
    in [since, until), newest last seen first within each component (components by
    name)."""
    store = open_store(store)
    roots, calls, tokens = _window_spans(store, agent, since, until)
    runs_of: dict[tuple[str, str | None], set[str]] = defaultdict(set)
    seen: dict[tuple[str, str | None], tuple[int, int]] = {}
    for (trace_id, name, version), (first, last) in calls.items():
        if component is not None and name != component:
            continue
        key = (name, version)
        runs_of[key].add(trace_id)
        low, high = seen.get(key, (first, last))
        seen[key] = (min(low, first), max(high, last))
    names = sorted({name for name, _version in runs_of})
    with store.read() as conn:
        recorded = {(r.component, r.version): r for r in conn.execute(
            select(_VERSIONS).where(_VERSIONS.c.component.in_(names)))} if names else {}
        aliases: dict[tuple[str, str], list[str]] = defaultdict(list)
        if names:
            for row in conn.execute(select(_ALIASES).where(_ALIASES.c.component.in_(names))):
                aliases[(row.component, row.version)].append(row.alias)
    cost = _cost_per_trace([(t, m, i, o) for (t, m), (i, o) in tokens.items()])
    scores = run_scores(store, sorted({t for ids in runs_of.values() for t in ids}), weights)
    figures = []
    for (name, version), ids in runs_of.items():
        rated = [scores[t] for t in ids if scores.get(t) is not None]
        latencies = [(roots[t][1] - roots[t][0]) / 1e6 for t in ids]
        costs = [cost.get(t, 0.0) for t in ids]
        row = recorded.get((name, version))
        first, last = seen[(name, version)]
        figures.append(VersionFigures(
            component=name, version=version, runs=len(ids), runs_with_feedback=len(rated),
            score=mean_interval(rated),
            cost_per_run_usd=None if any(c is None for c in costs) else statistics.fmean(costs),
            latency_ms_mean=statistics.fmean(latencies),
            latency_ms_p50=statistics.median(latencies),
            first_seen=first / 1e9, last_seen=last / 1e9,
            origin=row.origin if row is not None else None,
            produced_by_run=row.run_id if row is not None else None,
            produced_by_candidate=row.candidate_id if row is not None else None,
            aliases=tuple(sorted(aliases.get((name, version), ())))))
    figures.sort(key=lambda f: (f.component, -f.last_seen, f.version or ""))
    return figures


def _window_spans(store: Store, agent: str | None, since: float | None,
                  until: float | None) -> tuple[dict, dict, dict]:
    """What ``version_figures`` reads of the production runs in the window: their roots,
    then their LLM calls in one pass (two queries read these rows twice before, 1-1.7 s
    at 1M spans, bench/RESULTS.md "Web UI"):

    - roots: {trace_id: (start_ns, end_ns)} of the runs (``production_runs``);
    - calls: {(trace_id, component, version): (first, last start_ns)} of their LLM
      calls that name a component, those flagged inconsistent left out
      (``versions_carried``'s rule);
    - tokens: {(trace_id, model): (input, output)} summed over all their LLM calls.
    """
    s = _SPANS
    runs = production_runs(agent, s.c.trace_id, s.c.start_ns, s.c.end_ns, since=since,
                           until=until)
    query = (select(s.c.trace_id, s.c.component, s.c.prompt_version, s.c.prompt_flag,
                    s.c.start_ns, s.c.model, s.c.input_tokens, s.c.output_tokens)
             .where(s.c.trace_id.in_(select(runs.subquery().c.trace_id)),
                    s.c.span_type == "llm"))
    calls: dict[tuple[str, str, str | None], tuple[int, int]] = {}
    tokens: dict[tuple[str, str | None], tuple[int, int]] = {}
    with store.read() as conn:
        # the driver's plain tuples: SQLAlchemy's rows cost as much as the query here
        roots = {t: (start, end) for t, start, end in conn.execute(runs).cursor.fetchall()}
        rows = conn.execute(query).cursor.fetchall()
    for trace_id, name, version, flag, start, model, tokens_in, tokens_out in rows:
        spent = tokens.get((trace_id, model), (0, 0))
        tokens[(trace_id, model)] = (spent[0] + (tokens_in or 0), spent[1] + (tokens_out or 0))
        if name is not None and flag is None:
            key = (trace_id, name, version)
            first, last = calls.get(key, (start, start))
            calls[key] = (min(first, start), max(last, start))
    return roots, calls, tokens


def _cost_per_trace(tokens: Sequence[Any]) -> dict[str, float | None]:
    """Dollars per trace from its LLM calls' tokens and litellm's price map; None for a
    trace with a call of a model that has no known price (or no model recorded)."""
    from gepa_trace.lm.client import price

    prices: dict[tuple[str | None, int, int], float | None] = {}
    cost: dict[str, float | None] = {}
    for trace_id, model, tokens_in, tokens_out in tokens:
        key = (model, int(tokens_in), int(tokens_out))
        if key not in prices:
            prices[key] = price(model, key[1], key[2]) if model else None
        spent = prices[key]
        before = cost.get(trace_id, 0.0)
        cost[trace_id] = None if spent is None or before is None else before + spent
    return cost


__all__ = ["Interval", "VersionFigures", "mean_interval", "production_runs", "run_scores",
           "version_figures", "versions_carried"]
