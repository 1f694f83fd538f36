"""Where every line of every candidate's instructions came from.

Each candidate keeps, in ``meta["provenance"]``, the lines of every component whose
version it introduced (all of them for a seed or warm start; for a child, those that
differ from its first parent's), one record per line::

    {"text": "Answer with the year only.", "candidate": 12, "iteration": 7}
    {"text": "You answer questions.", "candidate": null, "iteration": 0, "seed": "3f2a9c..."}

A line is matched against the parent's lines with a line diff: a line kept verbatim
(or moved) keeps the parent line's record; a new line, or a lightly edited one, gets
this candidate as its origin (an edited line also keeps ``"was"``, the text it
replaced). A line from another run (warm start) names it in ``"run"``. What motivated
a candidate's new lines is stored once on that candidate, in ``meta["evidence"]``:
the ids of the examples its reflection read (the minibatch's, then the parent's
validation failures read beside it), their production trace ids and the ids of the
feedback records on them. A merge introduces no new line: each component's lines are those of
the parent that contributed it, found by following the lineage (``lines_of``).

Everything here is a pure function of candidates (``state.Candidate`` or anything with
``id``, ``prompts``, ``parents``, ``origin``, ``iteration``, ``diagnosis`` and ``meta``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gepa_trace.optimizer.protocols import Example

#: How alike (difflib ratio) a replaced line must be to the one it replaced to count as
#: an edit of it ("was: ...") rather than a new line; either way its origin is new.
EDIT_SIMILARITY = 0.6

Line = dict[str, Any]


def seed_lines(text: str, version: str) -> list[Line]:
    """Every line of a seed instruction: origin "seed", with the seed's version."""
    return [{"text": t, "candidate": None, "iteration": 0, "seed": version}
            for t in text.split("\n")]


def unknown_lines(text: str) -> list[Line]:
    """Lines whose origin was never recorded (a run stored before provenance was kept)."""
    return [{"text": t, "candidate": None, "iteration": None} for t in text.split("\n")]


def child_lines(parent: Sequence[Line], text: str, candidate_id: int | None,
                iteration: int | None) -> list[Line]:
    """The lines of ``text``, a new instruction written from the parent's lines
    ``parent``: lines kept verbatim keep their record (a line moved elsewhere too);
    the others get ``candidate_id`` and ``iteration`` as origin, with ``"was"`` when
    they edit a line of the parent (difflib ratio >= ``EDIT_SIMILARITY``)."""
    old = [line["text"] for line in parent]
    new = text.split("\n")
    out: list[Line | None] = [None] * len(new)
    removed: list[int] = []  # parent lines the diff does not keep in place
    inserted: list[int] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for k in range(i2 - i1):
                out[j1 + k] = dict(parent[i1 + k])
        else:
            removed.extend(range(i1, i2))
            inserted.extend(range(j1, j2))
    for j in inserted:  # a line moved: the same text among the lines removed elsewhere
        match = next((i for i in removed if old[i] == new[j]), None)
        if match is not None:
            removed.remove(match)
            out[j] = dict(parent[match])
    for j in inserted:
        if out[j] is not None:
            continue
        line: Line = {"text": new[j], "candidate": candidate_id, "iteration": iteration}
        best, ratio = None, 0.0
        for i in removed:
            r = difflib.SequenceMatcher(None, old[i], new[j], autojunk=False).ratio()
            if r > ratio:
                best, ratio = i, r
        if best is not None and ratio >= EDIT_SIMILARITY and new[j].strip():
            line["was"] = old[best]
            removed.remove(best)
        out[j] = line
    return [line for line in out if line is not None]


def evidence(examples: Iterable[Example]) -> dict[str, list]:
    """What motivated a reflection child: the ids of the examples its reflection read,
    their production trace ids and the ids of the feedback records on them (each once,
    in order)."""
    examples = list(examples)
    feedback = []
    for example in examples:
        for record in example.feedback:
            fid = record.get("id") if isinstance(record, Mapping) else None
            if fid is not None and fid not in feedback:
                feedback.append(fid)
    traces = list(dict.fromkeys(e.trace_id for e in examples if e.trace_id))
    return {"examples": [e.id for e in examples], "traces": traces, "feedback": feedback}


def lines_of(candidates: Sequence[Any], candidate_id: int, component: str) -> list[Line] | None:
    """The line records of ``component`` in candidate ``candidate_id``: its own, else
    those of the parent it took that version from (followed up the lineage). None when
    no candidate on the way recorded them (a run stored before provenance was kept)."""
    by_id = {c.id: c for c in candidates}
    seen: set[int] = set()
    current = by_id.get(candidate_id)
    while current is not None and current.id not in seen:
        seen.add(current.id)
        own = (current.meta or {}).get("provenance", {}).get(component)
        if own is not None:
            return [dict(line) for line in own]
        version = current.prompts.get(component)
        current = next((by_id[p] for p in current.parents
                        if p in by_id and by_id[p].prompts.get(component) == version), None)
    return None


def reflection_provenance(candidates: Sequence[Any], parent_id: int, candidate_id: int,
                          iteration: int, texts: Mapping[str, tuple[str, str]],
                          examples: Iterable[Example]) -> dict[str, Any]:
    """The ``meta`` entries of a reflection child: ``provenance`` of each component in
    ``texts`` (component -> (the parent's instruction, the new one)), diffed against
    the parent's lines, and ``evidence`` (see ``evidence``)."""
    provenance = {}
    for component, (before, after) in texts.items():
        parent = lines_of(candidates, parent_id, component)
        if parent is None or [line["text"] for line in parent] != before.split("\n"):
            parent = unknown_lines(before)  # never recorded: lines kept stay unknown
        provenance[component] = child_lines(parent, after, candidate_id, iteration)
    return {"provenance": provenance, "evidence": evidence(examples)}


def merge_provenance(candidates: Sequence[Any], first: int,
                     sources: Mapping[str, int]) -> dict[str, list[Line]]:
    """The ``meta["provenance"]`` of a merge: for each component taken from another
    parent than ``first``, the lines as that parent had them (a merge writes no line)."""
    out = {}
    for component, source in sources.items():
        if source == first:
            continue
        lines = lines_of(candidates, source, component)
        if lines is not None:
            out[component] = lines
    return out


def inherited_provenance(candidates: Sequence[Any], candidate_id: int, components: Iterable[str],
                         run_id: str) -> dict[str, list[Line]]:
    """The lines of candidate ``candidate_id`` of run ``run_id`` for a new run that
    starts from it (warm start): each line keeps its origin, named with its run."""
    out = {}
    for component in components:
        lines = lines_of(candidates, candidate_id, component)
        if lines is None:
            continue
        for line in lines:
            if line.get("candidate") is not None:
                line.setdefault("run", run_id)
        out[component] = lines
    return out


@dataclass(frozen=True)
class Origin:
    """A candidate that introduced lines: its iteration, diagnosis and evidence."""

    candidate: int
    iteration: int
    run: str
    diagnosis: str | None
    examples: tuple[str, ...] = ()
    traces: tuple[str, ...] = ()
    feedback: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "iteration": self.iteration, "run": self.run,
                "diagnosis": self.diagnosis, "examples": list(self.examples),
                "traces": list(self.traces), "feedback": list(self.feedback)}


@dataclass(frozen=True)
class Blame:
    """Each line of one version's instruction with its origin, and the candidates that
    introduced lines. ``note`` says why lines are unattributed, when they are."""

    component: str
    version: str
    run_id: str | None
    candidate_id: int | None
    lines: list[Line]
    origins: dict[tuple[str, int], Origin] = field(default_factory=dict)
    note: str | None = None

    def origin_of(self, line: Line) -> Origin | None:
        if line.get("candidate") is None:
            return None
        return self.origins.get((line.get("run") or self.run_id or "", line["candidate"]))

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "version": self.version, "run_id": self.run_id,
                "candidate_id": self.candidate_id, "lines": self.lines,
                "origins": [o.to_dict() for o in self.origins.values()], "note": self.note}


def origin_from(candidate: Any, run_id: str) -> Origin:
    """The ``Origin`` of a candidate that introduced lines, from its stored evidence
    (a run stored before evidence was kept: its minibatch ids only)."""
    found = (candidate.meta or {}).get("evidence") or {}
    return Origin(candidate.id, candidate.iteration, run_id, candidate.diagnosis,
                  tuple(found.get("examples") or candidate.minibatch or ()),
                  tuple(found.get("traces") or ()), tuple(found.get("feedback") or ()))


def blame(candidates: Sequence[Any], candidate_id: int, component: str, version: str,
          text: str, run_id: str,
          other_runs: Mapping[str, Sequence[Any]] | None = None,
          seed: tuple[str, str] | None = None) -> Blame:
    """The blame of ``component`` (whose instruction is ``text``) in candidate
    ``candidate_id`` of run ``run_id``. ``other_runs``: candidates of the runs that
    warm-started lines came from, by run id (origins there without it are left out).
    ``seed``: (version, instruction) of the run's seed, for a run stored before
    provenance was kept: its lines are then told apart from the others by a diff."""
    lines = lines_of(candidates, candidate_id, component)
    note = None
    if lines is None or [line["text"] for line in lines] != text.split("\n"):
        lines = (child_lines(seed_lines(seed[1], seed[0]), text, None, None)
                 if seed is not None else unknown_lines(text))
        note = (f"run {run_id} did not record which iteration wrote which line "
                "(it was stored before gepa-trace kept line provenance)")
    runs = {run_id: candidates, **(other_runs or {})}
    origins: dict[tuple[str, int], Origin] = {}
    for line in lines:
        cid = line.get("candidate")
        if cid is None:
            continue
        run = line.get("run") or run_id
        found = next((c for c in runs.get(run, ()) if c.id == cid), None)
        if found is not None and (run, cid) not in origins:
            origins[(run, cid)] = origin_from(found, run)
    return Blame(component, version, run_id, candidate_id, lines, origins, note)


def seed_provenance(prompts: Any) -> dict[str, list[Line]]:
    """The ``meta["provenance"]`` of a run's seed: every line of every component of the
    PromptSet ``prompts`` has origin "seed" and names the seed's version."""
    return {c: seed_lines(prompts.instruction(c), prompts.version_of(c).version)
            for c in prompts}


def renumbered(meta: Mapping[str, Any], old_id: int, new_id: int) -> dict[str, Any]:
    """``meta["provenance"]`` of a candidate proposed again under a new id: the lines it
    introduced as ``old_id`` name ``new_id`` (an empty dict when it has none)."""
    if "provenance" not in meta:
        return {}
    return {"provenance": {c: [{**line, "candidate": new_id}
                               if line.get("candidate") == old_id and "run" not in line
                               else dict(line) for line in lines]
                           for c, lines in meta["provenance"].items()}}
