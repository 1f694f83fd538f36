"""Why each line of a prompt is there: blame of a stored prompt version, read from the
store, for `gepa-trace prompts blame` and the report's section of the same name.

A version an optimization produced is blamed in that run (or the run given): each line
of its instruction is a seed line or names the iteration and candidate that wrote it,
whose diagnosis and evidence (examples, their traces, feedback records) are stored on
that candidate (``optimizer.provenance``). A seed that an earlier run produced is
followed into that run, so a line written two nights ago still names its iteration. A
version no run produced (observed in production, loaded from a file) is all
"seed/observed", and the blame says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from gepa_trace.errors import NotFoundError
from gepa_trace.optimizer.persistence import candidate_from_row
from gepa_trace.optimizer.provenance import Blame, Origin, blame, seed_lines
from gepa_trace.optimizer.state import UNJUDGED, Candidate
from gepa_trace.prompts.promptset import PromptVersion
from gepa_trace.report.svg import esc
from gepa_trace.store.engine import Store
from gepa_trace.store.tables import (
    CandidateRow,
    OptimizationRunRow,
    PromptAliasRow,
    PromptVersionRow,
)

TITLE = "Why each line is there"
DIAGNOSIS_CHARS = 300
#: How many runs back a seed line is followed (seed of a seed of ...).
MAX_SEED_DEPTH = 10


def _candidates(store: Store, run_id: str) -> list[Candidate]:
    with store.session() as session:
        rows = session.execute(select(CandidateRow).where(CandidateRow.run_id == run_id)
                               .order_by(CandidateRow.id)).scalars().all()
        return [candidate_from_row(r) for r in rows]


def _version_row(store: Store, component: str, version: str) -> Any:
    from gepa_trace.prompts.registry import get_version

    found = get_version(store, version, component)  # NotFoundError / ConfigError
    with store.session() as session:
        row = session.get(PromptVersionRow, (found.component, found.version))
        session.expunge(row)
        return row


def default_version(store: Store, component: str, run_id: str | None = None) -> str:
    """The version blamed when none is given: with ``run_id``, that run's best
    candidate's; else the component's ``production`` alias; else the version the newest
    optimization found best (else the newest any produced). NotFoundError for an
    unknown component or run."""
    with store.session() as session:
        known = session.execute(select(PromptVersionRow.version)
                                .where(PromptVersionRow.component == component)
                                .limit(1)).first()
        if known is None:
            raise NotFoundError(f"no component {component!r} in the store")
        if run_id is not None:
            run = session.get(OptimizationRunRow, run_id)
            if run is None:
                raise NotFoundError(f"no optimization run {run_id!r} in the store")
            best = run.best_candidate_id if run.best_candidate_id is not None else 0
            row = session.get(CandidateRow, (run_id, best))
            prompts = json.loads(row.prompts) if row is not None else {}
            if component not in prompts:
                raise NotFoundError(f"run {run_id!r} has no component {component!r}")
            return prompts[component]
        alias = session.get(PromptAliasRow, (component, "production"))
        if alias is not None:
            return alias.version
        # the newest run's best, else the newest version any run produced
        for run in session.execute(select(OptimizationRunRow)
                                   .where(OptimizationRunRow.best_candidate_id.is_not(None))
                                   .order_by(OptimizationRunRow.started_at.desc())).scalars():
            row = session.get(CandidateRow, (run.id, run.best_candidate_id))
            prompts = json.loads(row.prompts) if row is not None else {}
            if component in prompts:
                return prompts[component]
        newest = session.execute(
            select(PromptVersionRow.version)
            .where(PromptVersionRow.component == component)
            .where(PromptVersionRow.run_id.is_not(None))
            .order_by(PromptVersionRow.first_seen.desc()).limit(1)).scalars().first()
    if newest is None:
        raise NotFoundError(f"component {component!r} has no production alias and no version "
                            "an optimization produced; give --version")
    return newest


def _pick(candidates: Sequence[Candidate], component: str, version: str,
          preferred: Sequence[int | None]) -> Candidate | None:
    using = [c for c in candidates if c.prompts.get(component) == version]
    for cid in preferred:
        found = next((c for c in using if c.id == cid), None)
        if found is not None:
            return found
    return (next((c for c in using if c.status not in UNJUDGED), None)
            or (using[0] if using else None))


def load_blame(store: Store, component: str, version: str | None = None,
               run_id: str | None = None) -> Blame:
    """The blame of ``component`` at ``version`` (a hash or unique prefix; default:
    ``default_version``), in run ``run_id`` (default: the run that produced it).
    NotFoundError for an unknown component, version or run, or a run without that
    version."""
    if version is None:
        version = default_version(store, component, run_id)
    row = _version_row(store, component, version)
    return _blame_row(store, row, run_id, MAX_SEED_DEPTH)


def _blame_row(store: Store, row: Any, run_id: str | None, depth: int) -> Blame:
    text = PromptVersion(row.component, json.loads(row.template)).instruction
    explicit = run_id is not None
    run_id = run_id or row.run_id
    if run_id is None:
        lines = [{**line, "observed": True} for line in seed_lines(text, row.version)]
        return Blame(row.component, row.version, None, None, lines,
                     note=f"version {row.version} was not produced by an optimization run "
                          f"(origin: {row.origin}); every line is as it was "
                          f"{'observed in production' if row.origin == 'observed' else 'loaded'}")
    with store.session() as session:
        run = session.get(OptimizationRunRow, run_id)
        best = run.best_candidate_id if run is not None else None
    if run is None and explicit:
        raise NotFoundError(f"no optimization run {run_id!r} in the store")
    candidates = _candidates(store, run_id)
    chosen = _pick(candidates, row.component, row.version,
                   [row.candidate_id if row.run_id == run_id else None, best])
    if chosen is None:
        raise NotFoundError(f"run {run_id!r} has no candidate with {row.component} "
                            f"version {row.version}")
    seed = _seed_of(store, candidates, row.component)
    found = blame(candidates, chosen.id, row.component, row.version, text, run_id, seed=seed)
    # lines a warm start brought from other runs: their writers are in those runs
    other_runs = {r: _candidates(store, r)
                  for r in {line["run"] for line in found.lines if line.get("run")}}
    if other_runs:
        found = blame(candidates, chosen.id, row.component, row.version, text, run_id,
                      other_runs, seed=seed)
    return _through_seed(store, found, depth)


def _seed_of(store: Store, candidates: Sequence[Candidate],
             component: str) -> tuple[str, str] | None:
    """(version, instruction) of ``component`` in the run's seed, if stored."""
    seed = next((c for c in candidates if c.origin == "seed"), None)
    version = seed.prompts.get(component) if seed is not None else None
    if version is None:
        return None
    with store.session() as session:
        row = session.get(PromptVersionRow, (component, version))
        messages = json.loads(row.template) if row is not None else None
    return (version, PromptVersion(component, messages).instruction) if messages else None


def _through_seed(store: Store, found: Blame, depth: int) -> Blame:
    """Seed lines of a seed that an earlier run produced take their origin in that run
    (matched by text, each earlier line once)."""
    seeds = {line.get("seed") for line in found.lines
             if line.get("candidate") is None and line.get("seed")}
    if depth <= 0 or not seeds:
        return found
    lines, origins = [dict(line) for line in found.lines], dict(found.origins)
    for seed in seeds:
        with store.session() as session:
            row = session.get(PromptVersionRow, (found.component, seed))
            if row is None or row.run_id is None or row.run_id == found.run_id:
                continue
            session.expunge(row)
        try:
            earlier = _blame_row(store, row, None, depth - 1)
        except NotFoundError:
            continue
        pool = [line for line in earlier.lines if line.get("candidate") is not None]
        for i, line in enumerate(lines):
            if line.get("candidate") is not None or line.get("seed") != seed:
                continue
            match = next((e for e in pool if e["text"] == line["text"]), None)
            if match is None:
                continue
            pool.remove(match)
            lines[i] = {**match, "run": match.get("run") or earlier.run_id}
            origin = earlier.origin_of(match)
            if origin is not None:
                origins[(origin.run, origin.candidate)] = origin
    return Blame(found.component, found.version, found.run_id, found.candidate_id, lines,
                 origins, found.note)


# ---------------------------------------------------------------- words
def label(line: dict[str, Any], run_id: str | None = None) -> str:
    """The origin column of one line: ``seed``, ``it 7 #12`` (``*`` when the candidate
    belongs to another run), ``seed/observed``, or ``?`` (never recorded)."""
    if line.get("observed"):
        return "seed/observed"
    if line.get("candidate") is not None:
        other = "*" if line.get("run") and line.get("run") != run_id else ""
        return f"it {line.get('iteration')} #{line['candidate']}{other}"
    return "seed" if line.get("seed") else "?"


def short_diagnosis(text: str | None, limit: int = DIAGNOSIS_CHARS) -> str:
    """A diagnosis as one paragraph of at most about ``limit`` characters."""
    flat = re.sub(r"\s+", " ", text or "").strip() or "(no diagnosis recorded)"
    return flat if len(flat) <= limit else flat[:limit - 1].rstrip() + "…"


def evidence_sentence(origin: Origin) -> str:
    """``examples: 4 (traces 3f2a…, 9b1c…), feedback records: 17, 42``."""
    traces = ", ".join(t[:8] + "…" if len(t) > 9 else t for t in origin.traces)
    text = f"examples: {len(origin.examples)}"
    if traces:
        text += f" (traces {traces})"
    feedback = ", ".join(str(f) for f in origin.feedback) or "none"
    return f"{text}, feedback records: {feedback}"


def text_lines(found: Blame) -> list[str]:
    """The blame as the lines `gepa-trace prompts blame` prints."""
    where = (f"run {found.run_id}, candidate #{found.candidate_id}" if found.run_id
             else "no optimization run")
    out = [f"{found.component} @ {found.version} ({where})"]
    width = max([len(label(line, found.run_id)) for line in found.lines] + [10])
    out += [f"{label(line, found.run_id):<{width}} | {line['text']}" for line in found.lines]
    if found.note:
        out.append(found.note)
    for origin in found.origins.values():
        run = f", run {origin.run}" if origin.run != found.run_id else ""
        out.append("")
        out.append(f"#{origin.candidate}, iteration {origin.iteration}{run}: "
                   f"{short_diagnosis(origin.diagnosis)}")
        out.append(f"  {evidence_sentence(origin)}")
        for line in found.lines:
            if found.origin_of(line) is origin and "was" in line:
                out.append(f"  edited in iteration {origin.iteration}: {line['text']!r}, "
                           f"was: {line['was']!r}")
    return out


# ---------------------------------------------------------------- report
def best_blames(store: Store, run_id: str, best_id: int | None,
                components: Sequence[str]) -> list[Blame]:
    """The blame of each component of run ``run_id``'s candidate ``best_id`` (empty
    without one); a component that cannot be blamed is left out."""
    if best_id is None:
        return []
    candidates = _candidates(store, run_id)
    best = next((c for c in candidates if c.id == best_id), None)
    out = []
    for component in components:
        version = best.prompts.get(component) if best is not None else None
        if version is None:
            continue
        try:
            found = load_blame(store, component, version, run_id)
        except NotFoundError:
            continue
        out.append(found)
    return out


def blame_section(blames: Sequence[Blame], run_id: str) -> str:
    """The report's section: per component of the best candidate, each line changed
    since the seed with its iteration, linked to that iteration's diagnosis."""
    blocks = []
    for found in blames:
        changed = [line for line in found.lines
                   if line.get("candidate") is not None and line["text"].strip()]
        if not changed:
            blocks.append(f'<h3 class="mono">{esc(found.component)}</h3>'
                          '<p class="muted">no new line: every line is the seed\'s</p>')
            continue
        rows, shown = [], set()
        for line in changed:
            origin = found.origin_of(line)
            tag = esc(label(line, run_id))
            if line.get("run") in (None, run_id):
                tag = f'<a href="#diag-{esc(line["candidate"])}">{tag}</a>'
            why = ""  # the evidence once per candidate, on its first line
            if origin is not None and (origin.run, origin.candidate) not in shown:
                shown.add((origin.run, origin.candidate))
                why = esc(evidence_sentence(origin))
            was = (f'<div class="muted">edited, was: {esc(line["was"])}</div>'
                   if "was" in line else "")
            rows.append(f'<tr><td class="mono" style="white-space:nowrap">{tag}</td><td><pre>{esc(line["text"])}</pre>'
                        f'{was}</td><td class="muted">{why}</td></tr>')
        blocks.append(f'<h3 class="mono">{esc(found.component)}</h3>'
                      f'<table><tbody>{"".join(rows)}</tbody></table>')
    body = "".join(blocks) or "<p>No best candidate to blame.</p>"
    note = (esc("Each line of the best candidate's instructions that is not the seed's, with "
                "the iteration and candidate that wrote it (linked to its diagnosis) and the "
                "examples, traces and feedback records behind it. ")
            + f"<code>gepa-trace prompts blame COMPONENT --run {esc(run_id)}</code> "
            + "prints every line.")
    return (f'<section id="blame"><h2>{esc(TITLE)}</h2><p class="note">{note}</p>'
            f"{body}</section>")
