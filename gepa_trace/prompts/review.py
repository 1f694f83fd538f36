"""The review of a run's proposed prompt changes, before they can ship.

End users write into the optimizer's input: their questions, their feedback comments,
content a tool returns. A reflection LM that follows instructions it reads copies them
into the next prompt, and the held-out gate cannot see an instruction that costs
nothing on the metric. So every candidate of a run is compared with the run's seed,
component by component, and every added or changed line is checked for
(``review_checks``): new URLs, e-mail addresses, phone numbers, code, markup,
instructions to reveal or ignore prompts; and text copied (or closely paraphrased) from
trace content that only a few traces or users supplied (``review_corpus``): a shingle
of ``NGRAM_WORDS`` words, or ``CONTENT_WORDS`` content words, that the seed does not
hold and that at most ``FEW_TRACES`` traces or users (or ``FEW_SHARE`` of the run's
examples, whichever is more) carry, or that only one feedback comment carries (a comment
pasted verbatim into many traces is one voice, not task vocabulary); and, however many
traces carry it, copied text that tells the model what to do ("always say ...", "you
must ...", "IMPORTANT: ..."): content is evidence about the task, and a directive copied
word for word from it was written by whoever wrote that content, not learned from it.

Every flag carries its evidence: the traces and feedback records whose content holds
the flagged text, and how many distinct users those are when runs record one.
An allowed fragment (``Allow``) is never flagged. ``export`` refuses a best candidate
with flags unless approved; the approval is a run event (``APPROVED``).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select

from gepa_trace.errors import NotFoundError, ReviewRequired
from gepa_trace.prompts.review_checks import ALLOW_ENV, ALLOW_FILE, Allow, line_findings
from gepa_trace.prompts.review_corpus import (
    CONTENT_WORDS,
    NGRAM_WORDS,
    Support,
    TraceCorpus,
    shingle_keys,
    shingles,
    word_spans,
    words,
)
from gepa_trace.store import (
    CandidateRow,
    EvaluationRow,
    OptimizationRunRow,
    PromptVersionRow,
    RunEventRow,
    Store,
)

__all__ = ["ALLOW_ENV", "ALLOW_FILE", "APPROVED", "CONTENT_WORDS", "FEW_SHARE", "FEW_TRACES",
           "KINDS", "NGRAM_WORDS", "REPEATED_COMMENT_LINES", "Allow", "Flag", "RunReview", "approvals",
           "approve_version", "is_approved", "record_approval", "require_approval",
           "review_run"]

_RUNS = OptimizationRunRow.__table__
_CANDIDATES = CandidateRow.__table__
_EVALS = EvaluationRow.__table__
_VERSIONS = PromptVersionRow.__table__
_EVENTS = RunEventRow.__table__

KINDS = ("url", "email", "phone", "code", "markup", "prompt_leak", "ignore_instructions",
         "copied_from_traces", "instruction_from_traces")
#: Copied text that directs the model: flagged however many traces carry it.
_DIRECTIVE = re.compile(
    r"(?i)^\W*(?:important|note|attention|warning)\b|\b(?:always|never|must|from\s+now\s+on"
    r"|make\s+sure|be\s+sure\s+to|do\s+not|don't|ignore|disregard|reveal|at\s+the\s+end\s+of"
    r"|end\s+(?:your|every|each|all)|start\s+(?:your|every|each|all))\b")
#: Copied text is flagged when at most this many traces (or users) carry it ...
FEW_TRACES = 3
#: ... or at most this share of the run's examples, whichever is more.
FEW_SHARE = 0.05
#: Text only feedback carries, in at most this many distinct lines, is flagged whatever
#: the number of traces: one comment pasted into many traces is one voice.
REPEATED_COMMENT_LINES = 2
#: Kind of the run event that records an approval of flagged changes.
APPROVED = "approved"
_SHOWN_TRACES = 3


@dataclass(frozen=True)
class Flag:
    """One fragment of a candidate's prompt that needs a person's review.

    ``text``: the fragment; ``line``: the whole prompt line it is in; ``trace_ids`` and
    ``feedback_ids``: the traces and feedback records whose content carries it (the
    evidence); ``users``: how many distinct end users those traces belong to (None when
    the traces record no user); ``version``: the component's prompt version.
    """

    candidate_id: int
    component: str
    kind: str
    text: str
    line: str
    trace_ids: tuple[str, ...]
    feedback_ids: tuple[int, ...]
    users: int | None
    version: str | None = None

    def evidence(self) -> str:
        """``from 5 traces (<id>, <id>, <id>, +2)`` or ``in no trace``."""
        if not self.trace_ids:
            return "in no trace"
        shown = ", ".join(self.trace_ids[:_SHOWN_TRACES])
        more = f", +{len(self.trace_ids) - _SHOWN_TRACES}" if len(
            self.trace_ids) > _SHOWN_TRACES else ""
        noun = "trace" if len(self.trace_ids) == 1 else "traces"
        return f"from {len(self.trace_ids)} {noun} ({shown}{more})"

    def describe(self) -> str:
        """``url 'http://evil.example' in answerer, from 3 traces``."""
        text = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        count = len(self.trace_ids)
        source = (f"from {count} trace{'s' if count != 1 else ''}" if count
                  else "in no trace")
        return f"{self.kind} {text!r} in {self.component}, {source}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["trace_ids"], out["feedback_ids"] = list(self.trace_ids), list(self.feedback_ids)
        return out


@dataclass
class RunReview:
    """The flags of every candidate of a run (the seed excluded), each against the seed."""

    run_id: str
    flags: list[Flag]
    best_candidate_id: int | None
    examples: int = 0
    allow: Allow = field(default_factory=Allow)

    @property
    def best_flags(self) -> list[Flag]:
        """The flags of the best candidate's changes against the seed."""
        return [f for f in self.flags if f.candidate_id == self.best_candidate_id]

    def flags_of_version(self, component: str, version: str) -> list[Flag]:
        """The flags of one prompt version (each fragment once)."""
        seen, out = set(), []
        for f in self.flags:
            if f.component == component and f.version == version and (
                    f.kind, f.text) not in seen:
                seen.add((f.kind, f.text))
                out.append(f)
        return out

    def sentence(self, flags: list[Flag] | None = None) -> str:
        """``2 flagged changes need review (url 'http://evil.example' in answerer, from 3
        traces; ...)`` for ``flags`` (default: the best candidate's)."""
        flags = self.best_flags if flags is None else flags
        shown = "; ".join(f.describe() for f in flags[:2])
        more = f"; +{len(flags) - 2} more" if len(flags) > 2 else ""
        noun = "change needs" if len(flags) == 1 else "changes need"
        return f"{len(flags)} flagged {noun} review ({shown}{more})"

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "best_candidate_id": self.best_candidate_id,
                "examples": self.examples, "best_flagged": bool(self.best_flags),
                "flags": [f.to_dict() for f in self.flags],
                "best_flags": [f.to_dict() for f in self.best_flags]}


def _lines(messages: list[dict[str, Any]]) -> list[str]:
    out = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            out.extend(line for line in content.splitlines() if line.strip())
    return out


@dataclass
class _Finding:
    kind: str
    text: str
    line: str
    support: Support


class _Reviewer:
    """Reviews prompt versions of one run against its seed; each distinct version once."""

    def __init__(self, corpus: TraceCorpus, seed: dict[str, list[str]], examples: int,
                 allow: Allow):
        self.corpus, self.seed, self.allow = corpus, seed, allow
        self.few = max(FEW_TRACES, int(FEW_SHARE * examples))
        self._found: dict[str, Support] = {}
        self._lines: dict[tuple[str, str], list[_Finding]] = {}
        self._seed_keys = {c: shingle_keys("\n".join(lines)) for c, lines in seed.items()}

    def new_lines(self, component: str, lines: list[str]) -> list[str]:
        seed = {line.strip() for line in self.seed.get(component, [])}
        return list(dict.fromkeys(line for line in lines if line.strip() not in seed))

    def prepare(self, added: dict[str, set[str]]) -> None:
        """Index, in one pass over the corpus, every shingle of the added lines."""
        keys: set[str] = set()
        for component, lines in added.items():
            for line in lines:
                keys |= shingle_keys(line) - self._seed_keys.get(component, set())
        self._support = self.corpus.supporters(keys)

    def _find(self, fragment: str) -> Support:
        if fragment not in self._found:
            self._found[fragment] = self.corpus.find(fragment)
        return self._found[fragment]

    def _few(self, support: Support) -> bool:
        """Whether copied text came from a few: few traces (or users, where runs record
        them), or one feedback comment repeated verbatim, however many traces repeat it
        (many users who mean the same say it in their own words)."""
        users = self.corpus.users_of(support.traces)
        count = users if users is not None else len(support.traces)
        repeated = (bool(support.traces) and not support.in_spans
                    and support.lines <= REPEATED_COMMENT_LINES)
        return 0 < count <= self.few or repeated

    def copied(self, component: str, line: str) -> list[_Finding]:
        """Runs of the line's words copied from content few traces carry, and runs copied
        from content many carry that direct the model."""
        tokens = words(line)
        seed_keys = self._seed_keys.get(component, set())
        few: list[tuple[int, int, Support]] = []
        many: list[tuple[int, int, Support]] = []
        for a, b, key in shingles(tokens):
            support = self._support.get(key)
            if key in seed_keys or support is None or not support.traces:
                continue
            _extend(few if self._few(support) else many, a, b, support)
        where = word_spans(line)  # the copied words as the line writes them
        found = [_Finding("copied_from_traces", line[where[a][0]:where[b - 1][1]], line,
                          support) for a, b, support in few]
        for a, b, support in many:
            text = line[where[a][0]:where[b - 1][1]]
            if _DIRECTIVE.search(text):
                found.append(_Finding("instruction_from_traces", text, line, support))
        return found

    def review(self, component: str, lines: list[str]) -> list[_Finding]:
        """The allowed-through findings of every new line (a line kept by many versions
        is checked once)."""
        seed_text = "\n".join(self.seed.get(component, []))
        out = []
        for line in self.new_lines(component, lines):
            key = (component, line)
            if key not in self._lines:
                found = [_Finding(f.kind, f.text, line, self._find(f.text))
                         for f in line_findings(line, seed_text)]
                found += self.copied(component, line)
                self._lines[key] = [f for f in found
                                    if not self.allow.allows(f.kind, f.text, line)]
            out += self._lines[key]
        return out


def _extend(spans: list[tuple[int, int, Support]], a: int, b: int, support: Support) -> None:
    """Add words ``a:b`` carried by ``support`` to ``spans``, merging overlapping runs."""
    if spans and a <= spans[-1][1]:
        start, end, before = spans[-1]
        merged = Support(lines=0)
        merged.add(before)
        merged.add(support)
        spans[-1] = (start, max(end, b), merged)
    else:
        spans.append((a, b, support))


def _load_templates(conn, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    out = {}
    for component in sorted({c for c, _v in wanted}):
        for version, template in conn.execute(select(_VERSIONS.c.version, _VERSIONS.c.template)
                                              .where(_VERSIONS.c.component == component)):
            if (component, version) in wanted:
                out[(component, version)] = _lines(json.loads(template))
    return out


def review_run(store: Store, run_id: str, *, allow: Allow | None = None) -> RunReview:
    """Review every candidate of ``run_id`` against its seed (see the module docstring).

    ``allow`` defaults to ``Allow.load()`` (the environment variable and the file in the
    working directory). ``NotFoundError`` when there is no such run.
    """
    allow = Allow.load() if allow is None else allow
    with store.read() as conn:
        run = conn.execute(select(_RUNS).where(_RUNS.c.id == run_id)).first()
        if run is None:
            raise NotFoundError(f"no optimization run {run_id!r} in the store "
                                "(list them with `gepa-trace runs`)")
        cands = conn.execute(select(_CANDIDATES.c.id, _CANDIDATES.c.origin,
                                    _CANDIDATES.c.prompts)
                             .where(_CANDIDATES.c.run_id == run_id)
                             .order_by(_CANDIDATES.c.id)).all()
        example_ids = sorted(conn.execute(select(_EVALS.c.example_id).where(
            _EVALS.c.run_id == run_id).distinct()).scalars())
        prompts = {c.id: json.loads(c.prompts) for c in cands}
        templates = _load_templates(conn, {(comp, v) for p in prompts.values()
                                           for comp, v in p.items()})
    seed_row = next((c for c in cands if c.origin == "seed"), None)
    seed_prompts = prompts.get(seed_row.id, {}) if seed_row else {}
    seed = {comp: templates.get((comp, v), []) for comp, v in seed_prompts.items()}
    corpus = TraceCorpus.of_run(store, run_id, example_ids,
                                seed_row.id if seed_row else None,
                                [line for lines in templates.values() for line in lines])
    reviewer = _Reviewer(corpus, seed, len(example_ids), allow)
    others = [c for c in cands if seed_row is None or c.id != seed_row.id]
    versions = {(comp, v) for c in others for comp, v in prompts[c.id].items()
                if seed_prompts.get(comp) != v}
    added: dict[str, set[str]] = {}
    for comp, v in versions:
        added.setdefault(comp, set()).update(reviewer.new_lines(comp, templates.get((comp, v),
                                                                                     [])))
    reviewer.prepare(added)
    by_version = {key: reviewer.review(key[0], templates.get(key, []))
                  for key in sorted(versions)}
    flags = []
    for cand in others:
        for comp, v in prompts[cand.id].items():
            for f in by_version.get((comp, v), []):
                traces = tuple(sorted(f.support.traces))
                flags.append(Flag(cand.id, comp, f.kind, f.text, f.line, traces,
                                  tuple(sorted(f.support.feedback)),
                                  corpus.users_of(traces), v))
    return RunReview(run_id, flags, run.best_candidate_id, len(example_ids), allow)


def approvals(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The approvals recorded for ``run_id`` (payloads of its ``approved`` events)."""
    with store.read() as conn:
        rows = conn.execute(select(_EVENTS.c.payload).where(
            (_EVENTS.c.run_id == run_id) & (_EVENTS.c.kind == APPROVED))
            .order_by(_EVENTS.c.seq)).scalars().all()
    return [json.loads(p or "{}") for p in rows]


def is_approved(store: Store, run_id: str, component: str, version: str) -> bool:
    """Whether an approval of ``run_id`` covers ``component``'s ``version``."""
    return any((a.get("versions") or {}).get(component) == version
               for a in approvals(store, run_id))


def record_approval(store: Store, run_id: str, flags: list[Flag],
                    versions: dict[str, str], *, by: str) -> None:
    """Record, as a run event, that a person approved ``flags`` of ``versions``
    (``by``: the command that asked, e.g. export or promote)."""
    payload = {"by": by, "versions": versions, "flags": [f.to_dict() for f in flags]}
    with store.write() as conn:
        last = conn.execute(select(func.max(_EVENTS.c.seq)).where(
            _EVENTS.c.run_id == run_id)).scalar()
        conn.execute(_EVENTS.insert().values(
            run_id=run_id, seq=(last or 0) + 1, kind=APPROVED,
            payload=json.dumps(payload, ensure_ascii=False), created_at=time.time()))


def require_approval(store: Store, review: RunReview, flags: list[Flag],
                     versions: dict[str, str], *, approve: bool, by: str) -> list[Flag]:
    """``flags`` once approved: by ``approve`` (recorded now, with ``versions``, as a run
    event) or by an approval recorded before for every flagged version. Raises
    ``ReviewRequired`` (``by``: export or promote, named in the message) when they are
    not approved. Returns the approved flags (none when nothing is flagged)."""
    if not flags:
        return []
    flagged = {(f.component, f.version) for f in flags}
    if all(v is not None and is_approved(store, review.run_id, c, v) for c, v in flagged):
        return flags
    if not approve:
        raise ReviewRequired(f"{by} refused: {review.sentence(flags)}; see `gepa-trace runs "
                             f"show {review.run_id}`; rerun with --approve to {by} anyway")
    record_approval(store, review.run_id, flags, versions, by=by)
    return flags


def approve_version(store: Store, run_id: str, component: str, version: str, *,
                    approve: bool, review: RunReview | None = None) -> list[Flag]:
    """The approved flags of ``component``'s ``version``, made by run ``run_id`` (see
    ``require_approval``); ``review``: that run's review, if the caller has it. A version
    whose run is no longer in the store (recorded by ``record_versions`` from a file, or
    copied from another store) has no seed and no traces to be reviewed against."""
    if review is None:
        try:
            review = review_run(store, run_id)
        except NotFoundError:
            return []
    flags = review.flags_of_version(component, version)
    return require_approval(store, review, flags, {component: version}, approve=approve,
                            by="promote")
