"""Warm start: seed a new run with the front members of an earlier run of the same agent.

The earlier run's candidates that carried a front member when it last checkpointed
(best mean validation score first) become ``warm_start`` candidates of the new run, up
to a limit; components the earlier run did not have keep the seed's version. They are
scored on the new run's validation set like the seed.
"""

from __future__ import annotations

from gepa_trace.errors import ConfigError
from gepa_trace.optimizer.persistence import latest_run_id, load_run
from gepa_trace.optimizer.provenance import inherited_provenance, seed_lines
from gepa_trace.optimizer.state import Candidate, RunState
from gepa_trace.prompts import PromptSet, PromptVersion
from gepa_trace.store.engine import Store


def warm_start_candidates(store: Store | None, source: str | None, agent: str, run_id: str,
                          state: RunState, seed_prompts: PromptSet, limit: int
                          ) -> list[tuple[Candidate, list[PromptVersion]]]:
    """New candidates (ids following the state's) and their versions, from run ``source``
    ("latest": the newest other run of ``agent`` with a validated best). Raises
    ConfigError without a store or when ``source`` optimized another agent."""
    if not source:
        return []
    if store is None:
        raise ConfigError("warm_start_from needs a store to read the earlier run from")
    if source == "latest":
        source = latest_run_id(store, agent, exclude=run_id)
        if source is None:
            return []
    earlier = load_run(store, source)
    if earlier.row.agent != agent:
        raise ConfigError(f"warm start: run {source!r} optimized agent "
                          f"{earlier.row.agent!r}, not {agent!r}")
    ranked = sorted((c for c in earlier.candidates if c.val_score is not None),
                    key=lambda c: (-c.val_score, c.id))
    front_ids = {int(i) for i in (earlier.totals.get("front_candidates") or [])}
    seed_versions = seed_prompts.versions()
    out: list[tuple[Candidate, list[PromptVersion]]] = []
    for old in ranked:
        if front_ids and old.id not in front_ids:
            continue
        prompts = {c: old.prompts.get(c, seed_versions[c]) for c in state.components}
        if state.find(prompts) is not None or any(prompts == c.prompts for c, _v in out):
            continue
        versions = [earlier.versions.get((c, v)) or seed_prompts.version_of(c)
                    for c, v in prompts.items()]
        # lines keep their origins in the earlier run; a component it lacked is the seed's
        lines = inherited_provenance(earlier.candidates, old.id,
                                     [c for c in prompts if c in old.prompts], source)
        lines.update({c: seed_lines(seed_prompts.instruction(c), v)
                      for c, v in prompts.items() if c not in old.prompts})
        out.append((Candidate(state.next_id() + len(out), prompts, origin="warm_start",
                              status="accepted",
                              meta={"from_run": source, "from_candidate": old.id,
                                    "provenance": lines}),
                    versions))
        if len(out) >= limit:
            break
    return out
