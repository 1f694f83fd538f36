"""Prompt versions in the store: recording them, aliases (``production``), diffs, and
loading an alias for deployment with a fallback file for when the store is unreachable.
"""

from __future__ import annotations

import difflib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.exc import SQLAlchemyError

from gepa_trace.errors import ConfigError, NotFoundError, StoreError, StoreMissing
from gepa_trace.prompts.promptset import PromptSet, PromptVersion
from gepa_trace.store import PromptAliasRow, PromptVersionRow, Store, open_store
from gepa_trace.store.tables import AliasChangeRow

log = logging.getLogger(__name__)
_VERSIONS = PromptVersionRow.__table__
_ALIASES = PromptAliasRow.__table__
_CHANGES = AliasChangeRow.__table__


@dataclass(frozen=True)
class StoredVersion:
    component: str
    version: str
    messages: list[dict[str, str]]
    origin: str
    agent: str | None
    run_id: str | None
    parent_version: str | None
    first_seen: float
    last_seen: float
    aliases: tuple[str, ...] = ()

    def text(self) -> str:
        """The template as readable text (one block per message), for diffs."""
        parts = []
        for msg in self.messages:
            if msg["role"] == "placeholder":
                parts.append(f"[{msg['variable']}: messages]")
            else:
                parts.append(f"[{msg['role']}]\n{msg['content']}")
        return "\n\n".join(parts) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "version": self.version,
                "messages": self.messages, "origin": self.origin, "agent": self.agent,
                "run_id": self.run_id, "parent_version": self.parent_version,
                "first_seen": self.first_seen, "last_seen": self.last_seen,
                "aliases": list(self.aliases)}


def record_versions(store: Store, prompts: PromptSet, *, origin: str = "optimization",
                    run_id: str | None = None, candidate_id: int | None = None) -> None:
    """Record every version of ``prompts`` not yet in the store (existing ones are kept)."""
    now = time.time()
    rows = []
    for name in prompts:
        pv = prompts.version_of(name)
        rows.append({"component": name, "version": pv.version, "agent": prompts.agent,
                     "template": json.dumps(pv.messages, ensure_ascii=False), "origin": origin,
                     "run_id": run_id, "candidate_id": candidate_id,
                     "parent_version": pv.parent_version, "first_seen": now, "last_seen": now})
    with store.write() as conn:
        store.insert_ignoring_duplicates(conn, _VERSIONS, rows)


def _stored(row: Any, aliases: tuple[str, ...] = ()) -> StoredVersion:
    return StoredVersion(component=row.component, version=row.version,
                         messages=json.loads(row.template), origin=row.origin, agent=row.agent,
                         run_id=row.run_id, parent_version=row.parent_version,
                         first_seen=row.first_seen, last_seen=row.last_seen, aliases=aliases)


def list_versions(store: Store, *, component: str | None = None,
                  agent: str | None = None) -> list[StoredVersion]:
    """Every stored version (newest first per component), with its aliases."""
    query = select(_VERSIONS)
    if component:
        query = query.where(_VERSIONS.c.component == component)
    if agent:
        query = query.where(_VERSIONS.c.agent == agent)
    with store.read() as conn:
        rows = conn.execute(query.order_by(_VERSIONS.c.component,
                                           _VERSIONS.c.first_seen.desc())).all()
        alias_rows = conn.execute(select(_ALIASES)).all()
    aliases: dict[tuple[str, str], list[str]] = {}
    for a in alias_rows:
        aliases.setdefault((a.component, a.version), []).append(a.alias)
    return [_stored(r, tuple(sorted(aliases.get((r.component, r.version), [])))) for r in rows]


def get_version(store: Store, version: str, component: str | None = None) -> StoredVersion:
    """A stored version by its hash (a unique prefix of at least 4 digits is enough)."""
    if len(version) < 4:
        raise ConfigError(f"version {version!r} is too short (give at least 4 hex digits)")
    query = select(_VERSIONS).where(_VERSIONS.c.version.startswith(version))
    if component:
        query = query.where(_VERSIONS.c.component == component)
    with store.read() as conn:
        rows = conn.execute(query).all()
    if not rows:
        where = f" of component {component!r}" if component else ""
        raise NotFoundError(f"no prompt version {version!r}{where} in the store")
    if len({(r.component, r.version) for r in rows}) > 1:
        raise ConfigError(f"version prefix {version!r} is ambiguous: "
                          + ", ".join(f"{r.component}@{r.version}" for r in rows))
    return _stored(rows[0])


def promote(store: Store, component: str, version: str, *, alias: str = "production",
            approve: bool = False, review: Any = None, actor: str = "api",
            reason: str | None = None, evidence: Mapping[str, Any] | None = None
            ) -> StoredVersion:
    """Point ``alias`` of ``component`` at ``version`` (which must be stored).

    A version an optimization run produced is reviewed first (``prompts.review``): if
    the review flags its changes, it is promoted only with ``approve`` (recorded as a
    run event) or an approval already recorded for it, else ``ReviewRequired``.
    ``review``: the run's ``RunReview`` when the caller has it (export does).
    The change is recorded (``alias_history``) with ``actor``, ``reason`` and
    ``evidence`` in the same transaction; pointing an alias where it already points
    records nothing.
    """
    if not alias or not alias.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"alias {alias!r} must be a word (letters, digits, - and _)")
    found = get_version(store, version, component)
    if found.run_id is not None and found.origin == "optimization":
        from gepa_trace.prompts.review import approve_version

        approve_version(store, found.run_id, component, found.version, approve=approve,
                        review=review)
    now = time.time()
    where = and_(_ALIASES.c.component == component, _ALIASES.c.alias == alias)
    with store.write() as conn:
        previous = conn.execute(select(_ALIASES.c.version).where(where)).scalar()
        conn.execute(_ALIASES.delete().where(where))
        conn.execute(_ALIASES.insert().values(component=component, alias=alias,
                                              version=found.version, updated_at=now))
        if previous != found.version:
            _record_change(conn, component, alias, previous, found.version, actor, reason,
                           evidence, now)
    return found


def _record_change(conn: Any, component: str, alias: str, previous: str | None,
                   version: str | None, actor: str, reason: str | None,
                   evidence: Mapping[str, Any] | None, when: float) -> None:
    conn.execute(_CHANGES.insert().values(
        component=component, alias=alias, previous=previous, version=version, actor=actor,
        reason=reason, evidence=json.dumps(dict(evidence or {}), default=str), created_at=when))


@dataclass(frozen=True)
class AliasChange:
    """One recorded change of an alias (``version`` None: removed)."""

    id: int
    component: str
    alias: str
    previous: str | None
    version: str | None
    actor: str
    reason: str | None
    evidence: dict[str, Any]
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def alias_history(store: Store, alias: str | None = None, *, component: str | None = None,
                  agent: str | None = None) -> list[AliasChange]:
    """Every recorded change of ``alias`` (all aliases: None), oldest first; ``agent``
    keeps the components that have a version recorded for that agent."""
    query = select(_CHANGES).order_by(_CHANGES.c.id)
    if alias is not None:
        query = query.where(_CHANGES.c.alias == alias)
    if component is not None:
        query = query.where(_CHANGES.c.component == component)
    if agent is not None:
        query = query.where(_CHANGES.c.component.in_(
            select(_VERSIONS.c.component).where(_VERSIONS.c.agent == agent)))
    with store.read() as conn:
        rows = conn.execute(query).all()
    return [_change(r) for r in rows]


def _change(row: Any) -> AliasChange:
    return AliasChange(row.id, row.component, row.alias, row.previous, row.version, row.actor,
                       row.reason, json.loads(row.evidence or "{}"), row.created_at)


def get_change(store: Store, change_id: int) -> AliasChange:
    """One recorded alias change; ``NotFoundError`` if there is none with that id."""
    with store.read() as conn:
        row = conn.execute(select(_CHANGES).where(_CHANGES.c.id == change_id)).first()
    if row is None:
        raise NotFoundError(f"no alias change {change_id} (see gepa-trace prompts history)")
    return _change(row)


def drop_alias(store: Store, component: str, alias: str, *, actor: str = "api",
               reason: str | None = None, evidence: Mapping[str, Any] | None = None
               ) -> str | None:
    """Remove ``alias`` of ``component``, recording the change; the version it pointed
    at (None: it was not set, and nothing is recorded)."""
    where = and_(_ALIASES.c.component == component, _ALIASES.c.alias == alias)
    with store.write() as conn:
        version = conn.execute(select(_ALIASES.c.version).where(where)).scalar()
        if version is not None:
            conn.execute(_ALIASES.delete().where(where))
            _record_change(conn, component, alias, version, None, actor, reason, evidence,
                           time.time())
    return version


def revert_change(store: Store, change_id: int, *, actor: str = "api",
                  approve: bool = False) -> AliasChange:
    """Point the alias of change ``change_id`` back at its ``previous`` version (remove it
    if there was none), recorded as a new change; the change reverted."""
    change = get_change(store, change_id)
    reason = f"revert of change {change_id}"
    if change.previous is None:
        drop_alias(store, change.component, change.alias, actor=actor, reason=reason)
    else:
        promote(store, change.component, change.previous, alias=change.alias, actor=actor,
                reason=reason, approve=approve)
    return change


def diff_versions(store: Store, a: str, b: str) -> str:
    """A unified diff between two stored versions' templates."""
    va, vb = get_version(store, a), get_version(store, b)
    return "".join(difflib.unified_diff(
        va.text().splitlines(keepends=True), vb.text().splitlines(keepends=True),
        fromfile=f"{va.component}@{va.version}", tofile=f"{vb.component}@{vb.version}"))


def prompts_for_alias(store: Store, alias: str = "production",
                      agent: str | None = None) -> PromptSet:
    """The PromptSet of every component whose ``alias`` is set (optionally one agent's)."""
    query = (select(_VERSIONS).join(_ALIASES, and_(_ALIASES.c.component == _VERSIONS.c.component,
                                                   _ALIASES.c.version == _VERSIONS.c.version))
             .where(_ALIASES.c.alias == alias))
    if agent:
        query = query.where(_VERSIONS.c.agent == agent)
    with store.read() as conn:
        rows = conn.execute(query).all()
    if not rows:
        raise NotFoundError(f"no component has the alias {alias!r}"
                            + (f" for agent {agent!r}" if agent else ""))
    versions = {r.component: PromptVersion(r.component, json.loads(r.template),
                                           parent_version=r.parent_version, run_id=r.run_id)
                for r in rows}
    return PromptSet(versions, agent=agent or rows[0].agent)


def load_prompts(alias: str = "production", store: str | Store | None = None, *,
                 agent: str | None = None, fallback: str | Path | None = None,
                 canary: str | None = None, fraction: float = 0.0,
                 key: Any = None) -> PromptSet:
    """The prompts a deployed agent should use: the ``alias`` versions from the store.

    Each successful load is also written to ``fallback`` (default
    ``prompts.<alias>.json`` in the working directory); when the store cannot be
    reached or is missing, that last good file is loaded instead and a warning is
    logged. ``store`` defaults to the one ``gt.instrument()`` records into (see
    ``store.engine``); a missing store is never created here.

    A canary: with ``canary="candidate", fraction=0.1, key=user_id``, a stable tenth of
    the keys get the ``canary`` alias's prompts instead (the same key always the same;
    ``prompts.canary``); while that alias is not set, everyone gets ``alias``'s. The
    alias chosen is recorded on the root span of the runs this context starts next
    (``gepa.prompt.alias``), which is how ``gepa-trace canary status`` tells the arms
    apart.
    """
    from gepa_trace.prompts.canary import in_canary, note_routed

    if canary is not None:
        if key is None:
            raise ConfigError("a canary needs key= (a user or session id), so that one "
                              "user always gets the same prompts")
        if in_canary(str(key), fraction, canary):
            try:
                prompts = _load_alias(canary, store, agent, Path(f"prompts.{canary}.json"))
            except NotFoundError:
                if canary not in _warned_canaries:
                    _warned_canaries.add(canary)
                    log.warning("canary alias %r is not set; its share of traffic gets %r",
                                canary, alias)
            else:
                note_routed(canary)
                return prompts
    path = Path(fallback) if fallback is not None else Path(f"prompts.{alias}.json")
    prompts = _load_alias(alias, store, agent, path)
    note_routed(alias)
    return prompts


_warned_canaries: set[str] = set()


def _load_alias(alias: str, store: str | Store | None, agent: str | None,
                path: Path) -> PromptSet:
    try:
        prompts = prompts_for_alias(open_store(store), alias, agent)
    except (StoreError, SQLAlchemyError) as exc:
        if path.is_file():
            log.warning("prompt store unreachable (%s); using the last good file %s",
                        str(exc).splitlines()[0], path)
            return PromptSet.load(path)
        if isinstance(exc, StoreMissing):  # keeps its type: a wrong path is "not found"
            raise StoreMissing(f"{exc} and no fallback file at {path}") from exc
        raise StoreError(f"prompt store unreachable ({str(exc).splitlines()[0]}) and no "
                         f"fallback file at {path}") from exc
    try:
        prompts.save(path)
    except OSError as exc:  # a read-only deployment directory must not stop the agent
        log.warning("could not write fallback prompt file %s: %s", path, exc)
    return prompts


def current_prompts(store: Store, agent: str, alias: str = "production") -> PromptSet:
    """The prompts ``agent`` runs with now: per component, the ``alias`` version if one is
    set, else the version that served most of its recent production runs, never one
    from a span flagged inconsistent (``prompts.seed.choose_seed`` says which and why)."""
    from gepa_trace.prompts.seed import choose_seed

    return choose_seed(store, agent, alias).prompts
