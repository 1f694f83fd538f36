"""How each prompt version did in production: its runs, its mean feedback score with an
interval, and its LLM calls' latency. Rollouts of the optimizer are left out.

Two GROUP BY queries whatever the number of versions: one over LLM spans, one over the
feedback of the traces that used each version. A run's feedback scores are mapped onto
0..1 by their declared range; replaced records do not count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import and_, func, select

from gepa_trace.store.engine import Store, open_store
from gepa_trace.store.tables import FeedbackRow, SpanRow

_SPANS = SpanRow.__table__
_FEEDBACK = FeedbackRow.__table__
Z95 = 1.959964


@dataclass(frozen=True)
class VersionFigures:
    """``runs``: production traces with an LLM call of this version; ``scored``: feedback
    scores on them; ``score`` and its 95% normal interval (None with no score);
    ``latency_ms``: mean duration of its LLM calls."""

    component: str
    version: str | None
    runs: int
    calls: int
    latency_ms: float | None
    scored: int = 0
    score: float | None = None
    score_low: float | None = None
    score_high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def version_figures(store: Store | str | None, *, agent: str | None = None,
                    component: str | None = None) -> dict[tuple[str, str | None],
                                                          VersionFigures]:
    """Figures per (component, version) of production LLM calls (one agent's with
    ``agent``, found through its root spans)."""
    store = open_store(store)
    s, f = _SPANS, _FEEDBACK
    where = [s.c.span_type == "llm", s.c.component.is_not(None), s.c.run_id.is_(None)]
    if component is not None:
        where.append(s.c.component == component)
    if agent is not None:
        roots = select(s.c.trace_id).where(s.c.parent_span_id.is_(None), s.c.agent == agent)
        where.append(s.c.trace_id.in_(roots.scalar_subquery()))
    calls_q = (select(s.c.component, s.c.prompt_version, func.count(),
                      func.count(func.distinct(s.c.trace_id)),
                      func.avg(s.c.end_ns - s.c.start_ns))
               .where(*where).group_by(s.c.component, s.c.prompt_version))
    used = (select(s.c.component, s.c.prompt_version, s.c.trace_id).distinct()
            .where(*where).subquery())
    low = func.coalesce(f.c.score_low, 0.0)
    norm = (f.c.score - low) / (func.coalesce(f.c.score_high, 1.0) - low)
    scores_q = (select(used.c.component, used.c.prompt_version, func.count(), func.avg(norm),
                       func.avg(norm * norm))
                .select_from(used.join(f, and_(f.c.trace_id == used.c.trace_id,
                                               f.c.replaced_by.is_(None),
                                               f.c.score.is_not(None))))
                .group_by(used.c.component, used.c.prompt_version))
    with store.read() as conn:
        calls = conn.execute(calls_q).all()
        scores = {(c, v): (int(n), mean, sq) for c, v, n, mean, sq in conn.execute(scores_q)}
    out = {}
    for comp, version, n_calls, n_runs, latency_ns in calls:
        n, mean, sq = scores.get((comp, version), (0, None, None))
        low_ci = high_ci = None
        if n and mean is not None:
            mean = float(mean)
            var = max(float(sq) - mean * mean, 0.0) * n / (n - 1) if n > 1 else 0.0
            half = Z95 * math.sqrt(var / n) if n > 1 else None
            if half is not None:
                low_ci, high_ci = max(0.0, mean - half), min(1.0, mean + half)
        out[(comp, version)] = VersionFigures(
            component=comp, version=version, runs=int(n_runs), calls=int(n_calls),
            latency_ms=float(latency_ns) / 1e6 if latency_ns is not None else None,
            scored=n, score=mean if n else None, score_low=low_ci, score_high=high_ci)
    return out


__all__ = ["VersionFigures", "version_figures"]
