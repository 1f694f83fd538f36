"""Canary releases of prompts: a stable share of traffic on a candidate alias, and
whether production feedback says it is better or worse.

Routing (``gt.load_prompts(alias="production", canary="candidate", fraction=0.1,
key=user_id)``) is a hash of the key, so one user always gets the same prompts and the
share is exact over many users. The alias a run was routed to is recorded on its root
span (``gepa.prompt.alias``) when the run starts in the same context after the load.

``canary_status`` puts each production run of the agent in an arm: by that attribute,
else by the prompt versions its LLM calls carried (a run that carried a version only the
canary has is the canary's; one that carried a version only production has is
production's). Each run's score is its feedback verdict (``store.verdict``); the arms are
compared by ``prompts.sequential.compare``, valid however often it is read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from gepa_trace.errors import ConfigError, NotFoundError
from gepa_trace.prompts.sequential import MIN_RUNS, Comparison, compare

#: The root-span attribute naming the alias a run's prompts were loaded from.
ALIAS_ATTRIBUTE = "gepa.prompt.alias"
_ROUTED: ContextVar[str | None] = ContextVar("gepa_trace_routed_alias", default=None)


def in_canary(key: str, fraction: float, canary: str) -> bool:
    """Whether ``key`` (a user id, a session id) falls in the canary's share; the same
    key always answers the same for one canary alias."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"canary fraction must be between 0 and 1, got {fraction!r}")
    digest = hashlib.sha256(f"gepa-trace-canary:{canary}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def note_routed(alias: str) -> None:
    """Remember, for the runs started in this context, which alias served them."""
    _ROUTED.set(alias)


def routed_alias() -> str | None:
    """The alias the prompts of this context's runs were loaded from (None: not said)."""
    return _ROUTED.get()


@dataclass(frozen=True)
class CanaryStatus:
    agent: str
    canary: str
    control: str
    canary_versions: Mapping[str, str]
    control_versions: Mapping[str, str]
    comparison: Comparison
    unassigned_runs: int = 0
    differing: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "canary": self.canary, "control": self.control,
                "canary_versions": dict(self.canary_versions),
                "control_versions": dict(self.control_versions),
                "differing_components": list(self.differing),
                "unassigned_runs": self.unassigned_runs, **self.comparison.to_dict()}


def canary_status(store: Any, agent: str, *, canary: str = "candidate",
                  control: str = "production", since: float | None = None,
                  alpha: float = 0.05, min_runs: int = MIN_RUNS) -> CanaryStatus:
    """Canary against control on the agent's production runs started since ``since``.
    The control's versions are its alias's, or, while that alias is not set, those most
    of the agent's recent production runs carried (``registry.current_prompts``)."""
    from gepa_trace.prompts.production import production_runs, run_scores, versions_carried
    from gepa_trace.prompts.registry import current_prompts, prompts_for_alias
    from gepa_trace.store import open_store
    from gepa_trace.store.tables import SpanRow

    store = open_store(store)
    canary_versions = prompts_for_alias(store, canary, agent).versions()
    # production as it runs: its alias if set, else what most recent runs carried (an
    # agent whose production prompts live in its code has no alias yet)
    try:
        control_versions = prompts_for_alias(store, control, agent).versions()
    except NotFoundError:
        control_versions = current_prompts(store, agent, control).versions()
    only_canary = {(c, v) for c, v in canary_versions.items() if control_versions.get(c) != v}
    only_control = {(c, v) for c, v in control_versions.items() if canary_versions.get(c) != v}
    s = SpanRow.__table__
    roots_q = production_runs(agent, s.c.trace_id, s.c.attributes, since=since)
    with store.read() as conn:
        roots = conn.execute(roots_q).all()
        calls = conn.execute(versions_carried(roots_q)).all()
    carried: dict[str, set[tuple[str, str]]] = {}
    for trace_id, component, version, _first, _last in calls:
        carried.setdefault(trace_id, set()).add((component, version))
    arm: dict[str, str] = {}
    unassigned = 0
    for trace_id, attributes in roots:
        said = _alias_of(attributes)
        seen = carried.get(trace_id, set())
        if said in (canary, control):
            arm[trace_id] = said
        elif seen & only_canary and not seen & only_control:
            arm[trace_id] = canary
        elif seen & only_control and not seen & only_canary:
            arm[trace_id] = control
        else:
            unassigned += 1
    scores = run_scores(store, list(arm))
    rated = {name: [scores[t] for t, a in arm.items() if a == name and scores[t] is not None]
             for name in (canary, control)}
    return CanaryStatus(agent, canary, control, canary_versions, control_versions,
                        compare(rated[canary], rated[control], alpha=alpha,
                                min_runs=min_runs),
                        unassigned, tuple(sorted(c for c, _v in only_canary)))


def _alias_of(attributes: str | None) -> str | None:
    if not attributes or ALIAS_ATTRIBUTE not in attributes:
        return None  # most roots: no JSON parse
    try:
        value = json.loads(attributes).get(ALIAS_ATTRIBUTE)
    except (ValueError, AttributeError):
        return None
    return str(value) if value is not None else None


__all__ = ["ALIAS_ATTRIBUTE", "CanaryStatus", "canary_status", "in_canary", "note_routed",
           "routed_alias"]
