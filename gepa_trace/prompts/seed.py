"""Which prompt version seeds an optimization run, and why (issue 18).

Per component of an agent, the seed is:

1. the version its ``production`` alias points at, when one is set; else
2. the version that served most of the component's last ``RECENT_RUNS`` production
   runs (traces of the agent made outside any optimization run), ties going to the one
   that served the most recent of them.

Step 2 never counts a span flagged as inconsistent (its declared version is not the
hash of the template it carries: ``store.spans``) nor one that starts after the clock
plus the skew the store accepts, and it only picks a version whose stored template
hashes to it.
It is never simply the version of the newest span: one span, whatever start time it
claims, is one run among ``RECENT_RUNS``. A span that names a version without carrying
a template counts for that version, which only a consistent span can have recorded.
The agent's components are those whose templates were recorded with it
(``prompt_versions.agent``) or that its last production runs called; each one's latest
spans are read from the component index, so choosing the seed costs about the same on a
store of a thousand spans or a million.

``choose_seed`` returns the prompts and, per component, a ``SeedSource`` saying where
the version came from; the run's summary, its stored totals (``seed_sources``) and
``runs show`` print it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import and_, func, select, union_all

from gepa_trace.errors import NotFoundError
from gepa_trace.prompts.promptset import PromptSet, PromptVersion
from gepa_trace.store import PromptAliasRow, PromptVersionRow, SpanRow, Store
from gepa_trace.store.spans import MAX_CLOCK_SKEW_NS, flagged_counts, template_matches

#: How many of a component's most recent production runs vote for its seed.
RECENT_RUNS = 50
#: The spans read per run voting: a run calls a component once or a few times (a
#: PROMPT and an LLM span each); a component called more often gets fewer votes.
SPANS_PER_RUN = 10

_SPANS = SpanRow.__table__
_VERSIONS = PromptVersionRow.__table__
_ALIASES = PromptAliasRow.__table__


@dataclass(frozen=True)
class SeedSource:
    """Where one component's seed version came from: ``alias`` set means that alias
    points at it; else it served ``runs`` of the last ``considered`` production runs.
    ``ignored``: spans of the component flagged inconsistent, never counted."""

    component: str
    version: str
    alias: str | None = None
    runs: int = 0
    considered: int = 0
    ignored: int = 0

    def describe(self) -> str:
        if self.alias:
            text = f"alias {self.alias} -> {self.version}"
        else:
            text = (f"{self.version}: served {self.runs} of the last {self.considered} "
                    "production runs")
        if self.ignored:
            text += f" ({self.ignored} inconsistent span(s) ignored)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.describe()}


@dataclass(frozen=True)
class Seed:
    prompts: PromptSet
    sources: dict[str, SeedSource]

    def sources_dict(self) -> dict[str, dict[str, Any]]:
        return {c: s.to_dict() for c, s in sorted(self.sources.items())}


def _recent_votes(components: list[str], agent: str, recent_runs: int, now_ns: int) -> Any:
    """One statement: per (component, version), how many of the component's last
    ``recent_runs`` production runs it served, and when it last did. A run is a
    (trace, version) pair, dated by its latest span of the component. Each component's
    latest ``SPANS_PER_RUN * recent_runs`` spans are read, newest first, from the
    component index: the cost does not grow with the store."""
    s = _SPANS
    latest = []
    for component in components:
        part = (select(s.c.component, s.c.prompt_version, s.c.trace_id, s.c.start_ns)
                .where(and_(s.c.component == component, s.c.agent == agent,
                            s.c.run_id.is_(None), s.c.prompt_version.isnot(None),
                            s.c.prompt_flag.is_(None),
                            s.c.start_ns <= now_ns + MAX_CLOCK_SKEW_NS))
                .order_by(s.c.start_ns.desc()).limit(SPANS_PER_RUN * recent_runs)
                .subquery())
        latest.append(select(part))  # SQLite: a LIMIT inside UNION ALL needs its own SELECT
    spans = union_all(*latest).subquery()
    per_run = (select(spans.c.component, spans.c.prompt_version, spans.c.trace_id,
                      func.max(spans.c.start_ns).label("t"))
               .group_by(spans.c.component, spans.c.trace_id, spans.c.prompt_version)
               .subquery())
    ranked = select(per_run.c.component, per_run.c.prompt_version, per_run.c.t,
                    func.row_number().over(
                        partition_by=per_run.c.component,
                        order_by=(per_run.c.t.desc(), per_run.c.trace_id.desc()))
                    .label("rank")).subquery()
    return (select(ranked.c.component, ranked.c.prompt_version, func.count().label("runs"),
                   func.max(ranked.c.t).label("last"))
            .where(ranked.c.rank <= recent_runs)
            .group_by(ranked.c.component, ranked.c.prompt_version))


def _components(conn: Any, agent: str, recent_runs: int) -> list[str]:
    """The agent's components: those whose templates were recorded with it, and those
    its last production runs called (a template two agents share is recorded with the
    first one only). Both read a few rows by index."""
    s = _SPANS
    recorded = conn.execute(select(_VERSIONS.c.component).distinct()
                            .where(_VERSIONS.c.agent == agent)).scalars().all()
    roots = (select(s.c.trace_id)
             .where(and_(s.c.agent == agent, s.c.parent_span_id.is_(None),
                         s.c.run_id.is_(None)))
             .order_by(s.c.start_ns.desc()).limit(recent_runs).subquery())
    # no condition on the component: the primary key reads these traces' spans
    called = conn.execute(select(s.c.component).distinct()
                          .where(s.c.trace_id.in_(select(roots.c.trace_id)))).scalars().all()
    return sorted({c for c in (*recorded, *called) if c})


def choose_seed(store: Store, agent: str, alias: str = "production", *,
                recent_runs: int = RECENT_RUNS) -> Seed:
    """The seed prompts of a run on ``agent`` and where each came from (module
    docstring). Raises ``NotFoundError`` when the agent has no recorded component, or
    when no counted version of a component has a stored template."""
    votes: dict[str, list[tuple[int, int, str]]] = {}
    with store.read() as conn:
        components = _components(conn, agent, recent_runs)
        if components:
            query = _recent_votes(components, agent, recent_runs, time.time_ns())
            for row in conn.execute(query):
                votes.setdefault(row.component, []).append(
                    (int(row.runs), int(row.last), row.prompt_version))
        aliased = {r.component: r.version for r in conn.execute(
            select(_ALIASES).where(_ALIASES.c.alias == alias))}
        rows = conn.execute(select(_VERSIONS).where(
            _VERSIONS.c.component.in_(list(votes)))).all() if votes else []
    if not votes:
        raise NotFoundError(f"agent {agent!r} has no recorded prompt components; record runs "
                            "with gt.instrument() and gt.component()/PromptSet templates")
    templates = {(r.component, r.version): r.template for r in rows}
    ignored = flagged_counts(store, agent)
    chosen: dict[str, tuple[str, SeedSource]] = {}
    missing = []
    for component, counted in sorted(votes.items()):
        considered = sum(runs for runs, _last, _v in counted)
        source = None
        if component in aliased:
            source = SeedSource(component, aliased[component], alias=alias,
                                ignored=ignored.get(component, 0))
        else:
            for runs, _last, version in sorted(counted, reverse=True):
                # a row recorded before versions were checked may not hash to its
                # template (store.spans): never a seed by vote
                template = templates.get((component, version))
                if template is not None and template_matches(version, template):
                    source = SeedSource(component, version, runs=runs, considered=considered,
                                        ignored=ignored.get(component, 0))
                    break
        template = templates.get((component, source.version)) if source else None
        if template is None:
            missing.append(component)
        else:
            chosen[component] = (template, source)
    if missing:
        raise NotFoundError(f"agent {agent!r}: no stored template for components {missing}")
    prompts = PromptSet({c: PromptVersion(c, json.loads(t)) for c, (t, _s) in chosen.items()},
                        agent=agent)
    return Seed(prompts, {c: s for c, (_t, s) in chosen.items()})


def given_sources(prompts: PromptSet) -> dict[str, dict[str, Any]]:
    """The ``seed_sources`` of a run whose seed prompts the caller gave."""
    return {c: {"component": c, "version": v, "given": True, "text": f"{v}: given"}
            for c, v in sorted(prompts.versions().items())}


def save_seed_sources(store: Store, run_id: str, sources: dict[str, Any]) -> None:
    """Add ``seed_sources`` to the run's stored totals (after the loop: its checkpoints
    rewrite the totals)."""
    from gepa_trace.store import OptimizationRunRow

    table = OptimizationRunRow.__table__
    with store.write() as conn:
        raw = conn.execute(select(table.c.totals).where(table.c.id == run_id)).scalar()
        totals = json.loads(raw or "{}")
        totals["seed_sources"] = sources
        conn.execute(table.update().where(table.c.id == run_id)
                     .values(totals=json.dumps(totals)))


def seed_lines(sources: dict[str, Any]) -> list[str]:
    """The seed of a run as the CLI prints it: one line per component."""
    return [f"seed        {component:<20} {info.get('text') or info.get('version')}"
            for component, info in sorted((sources or {}).items())]
