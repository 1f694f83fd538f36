"""The nightly policy: act on what production feedback says about a canary or a fresh
promotion, and record every action with its numbers.

Two questions, each answered by ``prompts.sequential.compare`` (valid however often it
is asked, so asking every night is fine):

1. A canary (the ``canary`` alias is set): significantly better than production, with
   at least ``min_runs`` rated runs in each arm -> promote it (production points at
   its versions, the canary alias is removed). Significantly worse -> roll it back
   (the canary alias is removed; everyone loads production).
2. A fresh promotion (production's last change within ``fresh``): the runs that
   carried its new versions since the change against those that carried the previous
   versions before it. Significantly worse -> production goes back to the previous
   versions. Before/after is not a randomized comparison (traffic may change with the
   day of the week); a canary is the cleaner test, and the policy says which it used.

Every action goes through ``registry.promote`` / ``drop_alias``, so it is in the alias
history with actor ``nightly policy``, the reason and the comparison it acted on; undo
one with ``gepa-trace prompts revert CHANGE_ID``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from gepa_trace.errors import NotFoundError
from gepa_trace.prompts.sequential import MIN_RUNS, Comparison, compare

ACTOR = "nightly policy (gepa-trace watch)"
REVERT_REASON = "{} significantly worse since its promotion than before"
#: How long after a promotion the policy still compares it with what it replaced.
FRESH_S = 14 * 86400


@dataclass(frozen=True)
class Action:
    """What the policy did (or, with ``dry_run``, would do) and on what evidence."""

    kind: str  # promote-canary | rollback-canary | rollback-promotion | none
    reason: str
    versions: dict[str, str | None] = field(default_factory=dict)
    comparison: dict[str, Any] = field(default_factory=dict)
    applied: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_policy(store: Any, agent: str, *, canary: str = "candidate",
               control: str = "production", alpha: float = 0.05, min_runs: int = MIN_RUNS,
               fresh_s: float = FRESH_S, dry_run: bool = False) -> list[Action]:
    """The policy's actions for ``agent`` tonight (see the module docstring)."""
    from gepa_trace.prompts.canary import canary_status
    from gepa_trace.prompts.registry import prompts_for_alias

    actions: list[Action] = []
    try:
        prompts_for_alias(store, canary, agent)
        has_canary = True
    except NotFoundError:
        has_canary = False
    if has_canary:
        status = canary_status(store, agent, canary=canary, control=control, alpha=alpha,
                               min_runs=min_runs)
        evidence = status.to_dict()
        decision = status.comparison.decision
        if decision == "better":
            actions.append(_promote_canary(store, status.canary_versions, canary, control,
                                           evidence, dry_run))
        elif decision == "worse":
            actions.append(_rollback_canary(store, status.canary_versions, canary, evidence,
                                            dry_run))
        else:
            actions.append(Action("none", f"canary {canary}: {decision}", comparison=evidence))
    fresh = _fresh_promotion(store, agent, control, fresh_s)
    if fresh is not None:
        since, new, old = fresh
        comparison = _before_after(store, agent, new, old, since, alpha, min_runs)
        evidence = {**comparison.to_dict(), "promoted_at": since, "new_versions": new,
                    "previous_versions": old, "compared": "before/after the promotion"}
        if comparison.decision == "worse":
            actions.append(_revert(store, control, old, evidence, dry_run))
        else:
            actions.append(Action("none", f"promotion of {control}: {comparison.decision}",
                                  comparison=evidence))
    return actions


def _promote_canary(store, versions, canary, control, evidence, dry_run) -> Action:
    from gepa_trace.prompts.registry import drop_alias, promote

    reason = f"canary {canary} significantly better than {control}"
    if not dry_run:
        for component, version in sorted(versions.items()):
            promote(store, component, version, alias=control, actor=ACTOR, reason=reason,
                    evidence=evidence)
            drop_alias(store, component, canary, actor=ACTOR, reason=reason,
                       evidence=evidence)
    return Action("promote-canary", reason, dict(versions), evidence, not dry_run)


def _rollback_canary(store, versions, canary, evidence, dry_run) -> Action:
    from gepa_trace.prompts.registry import drop_alias

    reason = f"canary {canary} significantly worse than production"
    if not dry_run:
        for component in sorted(versions):
            drop_alias(store, component, canary, actor=ACTOR, reason=reason,
                       evidence=evidence)
    return Action("rollback-canary", reason, dict(versions), evidence, not dry_run)


def _revert(store, control, old, evidence, dry_run) -> Action:
    from gepa_trace.prompts.registry import drop_alias, promote

    reason = REVERT_REASON.format(control)
    if not dry_run:
        for component, version in sorted(old.items()):
            if version is None:  # the alias was not set before
                drop_alias(store, component, control, actor=ACTOR, reason=reason,
                           evidence=evidence)
            else:
                promote(store, component, version, alias=control, actor=ACTOR,
                        reason=reason, evidence=evidence, approve=True)
    return Action("rollback-promotion", reason, dict(old), evidence, not dry_run)


def _fresh_promotion(store, agent, control, fresh_s
                     ) -> tuple[float, dict[str, str], dict[str, str | None]] | None:
    """(when, new versions, previous versions) of ``control``'s latest change for the
    agent's components, if it is younger than ``fresh_s`` and not the policy's own
    revert (judging a revert again would undo it again)."""
    from gepa_trace.prompts.registry import alias_history

    changes = [c for c in alias_history(store, control, agent=agent) if c.version]
    if not changes:
        return None
    last = changes[-1]
    if time.time() - last.created_at > fresh_s or last.reason == REVERT_REASON.format(control):
        return None
    # one promotion: the run of changes (one per component) by the same actor for the
    # same reason that ends with the last
    batch = []
    for c in reversed(changes):
        if (c.actor, c.reason) != (last.actor, last.reason) or any(
                b.component == c.component for b in batch):
            break
        batch.insert(0, c)
    new = {c.component: c.version for c in batch}
    old = {c.component: c.previous for c in batch}
    if all(v is None for v in old.values()):
        return None  # the first promotion: nothing to compare with
    return batch[0].created_at, new, old


def _before_after(store, agent, new, old, since, alpha, min_runs) -> Comparison:
    """Runs that carried a new version since ``since`` against runs that carried a
    previous one before it."""
    from gepa_trace.prompts.production import production_runs, run_scores, versions_carried

    since_ns = round(since * 1e9)
    with store.read() as conn:
        rows = conn.execute(versions_carried(production_runs(agent))).all()
    after, before = set(), set()
    changed = {c for c in new if new[c] != old.get(c)}
    for trace_id, component, version, start_ns, _last in rows:
        if component not in changed:
            continue
        if start_ns >= since_ns and version == new[component]:
            after.add(trace_id)
        elif start_ns < since_ns and version == old.get(component):
            before.add(trace_id)
    both = after & before
    after, before = after - both, before - both
    scores = run_scores(store, sorted(after | before))
    return compare([scores[t] for t in after if scores[t] is not None],
                   [scores[t] for t in before if scores[t] is not None],
                   alpha=alpha, min_runs=min_runs)


__all__ = ["ACTOR", "FRESH_S", "Action", "run_policy"]
