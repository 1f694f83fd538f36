"""The trace content a run's prompts could have copied from, and who supplied it.

A run learns from its examples: recorded production runs whose trace ids are the
example ids of its evaluations. Their content is everything users and tools put in
front of the reflection LM: the spans' inputs and outputs (user questions, tool
results, LLM messages), the feedback on those traces (comment, label, expected), and
the replayed component records of the seed's evaluations. Each piece is split into
lines; a line carries the traces (and feedback records) it came from.

Prompt text is not evidence: every line of every template the run used (the seed's
system prompt is in every recorded LLM call, a candidate's in its own rollouts) is
dropped, and only the seed's rollouts are read (a candidate's outputs can repeat what
its own prompt told it to say, which would make the payload look widely supplied).

Two questions are answered fast, for any number of candidates:
``supporters(shingles)``: which traces carry each shingle (a run of words); and
``find(fragment)``: which traces carry a URL, address or any other fragment.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select

from gepa_trace.replay.dataset import user_of
from gepa_trace.store import EvaluationRow, FeedbackRow, SpanRow, Store

_SPANS = SpanRow.__table__
_FEEDBACK = FeedbackRow.__table__
_EVALS = EvaluationRow.__table__

#: Words in a shingle: a new prompt line sharing this many consecutive words with trace
#: content was copied from it (after case and punctuation are normalised).
NGRAM_WORDS = 6
#: Content words in a shingle that ignores small words ("the", "with", "must", ...), so a
#: close paraphrase ("you must always end with" / "always end with") still matches.
CONTENT_WORDS = 5
STOPWORDS = frozenset((
    "a", "an", "the", "to", "of", "in", "on", "at", "for", "with", "by", "from", "and",
    "or", "but", "if", "then", "so", "as", "is", "are", "was", "were", "be", "been",
    "being", "it", "its", "this", "that", "these", "those", "you", "your", "yours", "we",
    "our", "they", "their", "he", "she", "his", "her", "i", "me", "my", "must", "should",
    "shall", "will", "would", "can", "could", "may", "might", "please", "do", "does",
    "did", "not", "no"))

# Attribute keys that hold prompts, ids or settings, never user or tool content.
_SKIP_KEYS = ("gepa.prompt.template", "gepa.prompt.version", "metadata",
              "llm.invocation_parameters", "llm.prompt_template.template")
_SKIP_SUFFIXES = (".mime_type", ".role", ".id", "_id", ".name", ".model_name", ".kind",
                  ".provider", ".system")
_SKIPPED_SPAN_TYPES = ("chain", "prompt")  # copies of the state and the template


_WORD = re.compile(r"[A-Za-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case words and numbers of ``text``: what shingles are made of."""
    return [w.lower() for w in _WORD.findall(text)]


def word_spans(text: str) -> list[tuple[int, int]]:
    """Where each of ``words(text)`` is in ``text`` (start, end)."""
    return [m.span() for m in _WORD.finditer(text)]


def shingles(tokens: list[str]) -> Iterator[tuple[int, int, str]]:
    """(first word, last word + 1, key) of every shingle of ``tokens``: runs of
    ``NGRAM_WORDS`` words, and runs of ``CONTENT_WORDS`` content words."""
    for i in range(len(tokens) - NGRAM_WORDS + 1):
        yield i, i + NGRAM_WORDS, "w " + " ".join(tokens[i:i + NGRAM_WORDS])
    content = [(i, t) for i, t in enumerate(tokens) if t not in STOPWORDS]
    for j in range(len(content) - CONTENT_WORDS + 1):
        run = content[j:j + CONTENT_WORDS]
        yield run[0][0], run[-1][0] + 1, "c " + " ".join(t for _i, t in run)


def shingle_keys(text: str) -> set[str]:
    return {key for _a, _b, key in shingles(words(text))}


@dataclass
class Support:
    """Who carries a piece of text: traces, feedback records, and whether any of it is
    span content (not only feedback a user typed)."""

    traces: set[str] = field(default_factory=set)
    feedback: set[int] = field(default_factory=set)
    in_spans: bool = False
    lines: int = 1  # distinct lines of content that carry it

    def add(self, other: Support) -> None:
        self.traces |= other.traces
        self.feedback |= other.feedback
        self.in_spans = self.in_spans or other.in_spans
        self.lines += other.lines


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value (a string holding JSON is opened too)."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "{[" and text[-1:] in "}]":
            try:
                yield from _strings(json.loads(text))
                return
            except ValueError:
                pass
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _span_strings(attributes: dict[str, Any]) -> Iterator[str]:
    for key, value in attributes.items():
        if key in _SKIP_KEYS or key.endswith(_SKIP_SUFFIXES):
            continue
        yield from _strings(value)


class TraceCorpus:
    """The content of a run's example traces, line by line (see the module docstring).

    ``template_lines``: lines of prompt templates, never counted as content.
    """

    def __init__(self, template_lines: Iterable[str] = ()):
        self._skip = {line.strip() for line in template_lines if line.strip()}
        self.lines: dict[str, Support] = {}  # normalised line -> who carries it
        self.users: dict[str, str] = {}  # trace id -> end user id, where recorded
        self._text: str | None = None
        self._starts: list[int] = []
        self._order: list[str] = []

    def add(self, text: str, trace_id: str, feedback_id: int | None = None,
            in_spans: bool = True) -> None:
        for raw in text.splitlines():
            if raw.strip() in self._skip:
                continue
            line = " ".join(words(raw))
            if not line:
                continue
            support = self.lines.get(line)
            if support is None:
                support = self.lines[line] = Support()
                self._text = None
            support.traces.add(trace_id)
            if feedback_id is not None:
                support.feedback.add(feedback_id)
            support.in_spans = support.in_spans or in_spans

    @classmethod
    def of_run(cls, store: Store, run_id: str, example_ids: list[str], seed_id: int | None,
               template_lines: Iterable[str]) -> TraceCorpus:
        corpus = cls(template_lines)
        with store.read() as conn:
            for chunk in (example_ids[i:i + 500] for i in range(0, len(example_ids), 500)):
                spans = conn.execute(select(
                    _SPANS.c.trace_id, _SPANS.c.parent_span_id, _SPANS.c.attributes)
                    .where(_SPANS.c.trace_id.in_(chunk), _SPANS.c.run_id.is_(None),
                           (_SPANS.c.span_type.is_(None)
                            | _SPANS.c.span_type.notin_(_SKIPPED_SPAN_TYPES)))).all()
                for trace_id, parent, attributes_json in spans:
                    attributes = json.loads(attributes_json or "{}")
                    if parent is None:
                        user = user_of(attributes)  # the dataset's rule, one place
                        if user is not None:
                            corpus.users[trace_id] = user
                    for text in _span_strings(attributes):
                        corpus.add(text, trace_id)
                feedback = conn.execute(select(
                    _FEEDBACK.c.id, _FEEDBACK.c.trace_id, _FEEDBACK.c.comment,
                    _FEEDBACK.c.label, _FEEDBACK.c.expected)
                    .where(_FEEDBACK.c.trace_id.in_(chunk))).all()
                for fid, trace_id, *texts in feedback:
                    for text in texts:
                        if text:
                            corpus.add(str(text), trace_id, fid, in_spans=False)
            if seed_id is not None:
                rows = conn.execute(select(_EVALS.c.example_id, _EVALS.c.records,
                                           _EVALS.c.output).where(and_(
                    _EVALS.c.run_id == run_id, _EVALS.c.candidate_id == seed_id))).all()
                for example_id, records, output in rows:
                    for text in _strings(json.loads(records or "{}")):
                        corpus.add(text, example_id)
                    for text in _strings(json.loads(output) if output else None):
                        corpus.add(text, example_id)
        return corpus

    def supporters(self, keys: set[str]) -> dict[str, Support]:
        """Who carries each of ``keys`` (shingle keys); keys nobody carries are absent."""
        found: dict[str, Support] = {}
        if not keys:
            return found
        for line, support in self.lines.items():
            for key in {key for _a, _b, key in shingles(line.split())} & keys:
                found.setdefault(key, Support(lines=0)).add(support)
        return found

    def find(self, fragment: str) -> Support:
        """Who carries ``fragment`` (compared as normalised words, at word bounds)."""
        needle = " ".join(words(fragment))
        out = Support(lines=0)
        if not needle:
            return out
        if self._text is None:
            self._order = list(self.lines)
            self._starts, pos = [], 0
            for line in self._order:
                self._starts.append(pos)
                pos += len(line) + 2
            self._text = " " + "\n ".join(self._order) + "\n"
        target = f" {needle}"
        start = self._text.find(target)
        while start >= 0:
            end = start + len(target)
            if self._text[end] in " \n":
                index = bisect.bisect_right(self._starts, start) - 1
                out.add(self.lines[self._order[index]])
            start = self._text.find(target, end)
        return out

    def users_of(self, trace_ids: Iterable[str]) -> int | None:
        """Distinct end users of ``trace_ids``; None when none of them records one."""
        ids = {self.users[t] for t in trace_ids if t in self.users}
        return len(ids) if ids else None
