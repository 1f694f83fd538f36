"""Examples from the store: the root spans of one agent's production runs.

Each example is one recorded run: its input, its output, the feedback users gave, and
what that feedback means, by the one rule of ``store.verdict``: the run's score, and the
expected answer when the feedback gives one (an explicit correction, a recognised
correction phrasing, or an approved recorded output). ``Example.meta["verdict"]`` says
where the expected answer came from. Optimizer rollouts are traces too, but they are
never examples: only spans with no optimization run id are read.

Every production run of the agent is accounted for: a run that is not an example is in
``Dataset.left_out`` with the reason (see ``REASONS``). A run is left out, in this order,
when it is outside --since/--until, excluded by the user (``examples exclude``), has no
recorded inputs, has no feedback (--with-feedback), its score is outside
--min/--max-score, it has no feedback to learn from (``need_signal``), another kept run
has the same inputs (de-duplication keeps a golden run first, then the latest), it is
not in the --sample, or (log-only replay) none of its calls can be re-rendered. One
exception to the order: a run with no feedback record at all, when feedback is asked
for (--with-feedback, a score filter, ``need_signal``), is left out for that reason
without its inputs being read, so "no inputs recorded" counts only runs that have
feedback. Most of a long history is such runs; their ``LeftOut.run`` is read when first
asked for (``examples`` and the UI list them; the optimizer never does).

Each example's ``meta["user"]`` is the end user of the run (the root span's ``user.id``,
``enduser.id`` or ``gepa.user.id``; None when unknown): feedback of source ``user`` on a
run is its end user's. The dataset reports, never removes, what one user could push:
comments repeated verbatim across traces (``Dataset.repeated_comments``) and users who
supplied more than a share of the examples (``Dataset.user_shares``; ``replay.trust``).

A run "has feedback to learn from" when its verdict has an expected answer or a score,
or its feedback carries a comment or label (the ``feedback`` metric's judge reads those
as evidence), or its corrections conflict (the judge sees them).

The split into train / validation / held-out test (``replay.splits``) is a function of
the run's inputs alone (a hash of their JSON), so a question held out tonight is still held out
tomorrow, whatever other runs arrive, and the same question asked twice never lands in
training and in the held-out test at once. Golden runs (``examples golden``, or
``--golden FILE``) and every run with the same inputs as one go to validation, whatever
their hash. Examples come in the order of that hash too, so the same recorded questions
give the same dataset, whatever their trace ids.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from gepa_trace.errors import GepaTraceError, NotFoundError
from gepa_trace.optimizer.protocols import Example
from gepa_trace.replay import trust
from gepa_trace.replay.production_runs import ProductionRuns
from gepa_trace.replay.root_fields import inputs_of, loads, user_of
from gepa_trace.replay.splits import DEFAULT_SPLIT, SplitFractions, inputs_key, split_of, unit_hash
from gepa_trace.store import Store, safe_url
from gepa_trace.store.marks import marks_of
from gepa_trace.store.verdict import Verdict, verdicts

#: Why a run is not an example: reason code -> what ``examples`` prints.
REASONS = {
    "outside_window": "outside --since/--until",
    "excluded": "excluded by the user",
    "no_inputs": "no inputs recorded",
    "no_feedback": "no feedback (--with-feedback)",
    "score_filtered": "score outside --min-score/--max-score",
    "no_signal": "no feedback to learn from",
    "duplicate": "duplicate input",
    "not_sampled": "not in the --sample",
    "not_replayable": "not replayable (no recorded call re-renders)",
}


class NotEnoughExamples(GepaTraceError):
    """Too few recorded runs, or none with a usable signal, to optimize from."""


@dataclass(frozen=True)
class ExampleFilter:
    """Which recorded runs become examples. ``golden``: trace ids pinned to validation
    for this command (``--golden FILE``), on top of the store's golden marks; an id that
    is not a production run of the agent is refused (``NotFoundError``)."""

    since: float | None = None  # epoch seconds
    until: float | None = None
    only_with_feedback: bool = False
    min_score: float | None = None  # on the run's verdict score (0..1)
    max_score: float | None = None
    sample: int | None = None
    dedupe_inputs: bool = True
    golden: tuple[str, ...] = ()


@dataclass(frozen=True, init=False)
class LeftOut:
    """A production run that is not an example, and why (``reason``: a key of
    ``REASONS``; ``detail``: the sentence to show). ``run`` is the run as it would have
    been an example (None when it was never read: outside the time window, or without
    inputs); ``duplicate_of``: the kept run with the same inputs.

    A run left out for want of any feedback record is read (its attributes parsed)
    only when ``run`` is first asked for: a long history is mostly such runs, and the
    optimizer never looks at them."""

    trace_id: str
    reason: str
    detail: str
    duplicate_of: str | None = None

    def __init__(self, trace_id: str, reason: str, detail: str, run: Example | None = None,
                 duplicate_of: str | None = None, *,
                 read: Callable[[str], Example | None] | None = None) -> None:
        _set(self, "trace_id", trace_id)
        _set(self, "reason", reason)
        _set(self, "detail", detail)
        _set(self, "duplicate_of", duplicate_of)
        _set(self, "_run", run)
        _set(self, "_read", read)  # read(trace_id): the run, read on first use

    @property
    def run(self) -> Example | None:
        if self._read is not None:
            _set(self, "_run", self._read(self.trace_id))
            _set(self, "_read", None)
        return self._run


_set = object.__setattr__  # a frozen dataclass sets its fields this way too


@dataclass
class Dataset:
    """Examples of one agent, split by their inputs, and the runs left out."""

    agent: str
    train: list[Example] = field(default_factory=list)
    val: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    #: production runs outside --since/--until (in ``left_out`` only when listed)
    outside_window: int = 0
    # The runs left out, in order: a LeftOut, or the trace id of a run left out unread
    # for want of feedback, whose reason, detail and reader are ``_unread``; made a
    # LeftOut when ``left_out`` is first asked for (a long history has thousands).
    _left: list[LeftOut | str] = field(default_factory=list, repr=False)
    _unread: tuple[str, str, Callable[[str], Example | None]] | None = \
        field(default=None, repr=False)

    @property
    def left_out(self) -> list[LeftOut]:
        """The production runs that are not examples, each with its reason."""
        if self._unread is not None:
            reason, detail, read = self._unread
            # what LeftOut(trace_id, reason, detail, read=read) holds, made without its
            # __init__ (a setattr per field) for each of thousands of runs
            shared = LeftOut("", reason, detail, read=read).__dict__
            new = object.__new__

            def unread(trace_id: str) -> LeftOut:
                item = new(LeftOut)
                item.__dict__.update(shared, trace_id=trace_id)
                return item

            with _collection_paused():
                self._left = [unread(item) if type(item) is str else item
                              for item in self._left]
            self._unread = None
        return self._left  # type: ignore[return-value]  # only LeftOuts from here on

    def keep(self, usable: Any) -> None:
        """Keep only the examples ``usable(example)`` accepts; the others are left out
        as not replayable."""
        for split in ("train", "val", "test"):
            kept = []
            for example in getattr(self, split):
                if usable(example):
                    kept.append(example)
                else:
                    self._left.append(LeftOut(example.id, "not_replayable",
                                              REASONS["not_replayable"], run=example))
            setattr(self, split, kept)

    def all(self) -> list[Example]:
        return self.train + self.val + self.test

    def left_out_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {"outside_window": self.outside_window}
        unread = self._unread[0] if self._unread is not None else ""
        for item in self._left:  # without making the unread runs' LeftOuts
            reason = unread if isinstance(item, str) else item.reason
            if reason != "outside_window":
                counts[reason] = counts.get(reason, 0) + 1
        return {reason: n for reason, n in counts.items() if n}

    @property
    def skipped_without_signal(self) -> int:
        return self.left_out_by_reason().get("no_signal", 0)

    @property
    def skipped_not_replayable(self) -> int:
        return self.left_out_by_reason().get("not_replayable", 0)

    @property
    def repeated_comments(self) -> list[trust.RepeatedComment]:
        """Comments repeated verbatim on at least ``trust.REPEATED_COMMENT_MIN_TRACES``
        of the examples' runs, most traces first."""
        return trust.repeated_comments(self.all())

    def user_shares(self, share: float) -> list[trust.UserShare]:
        """End users who supplied more than ``share`` of the examples, or of validation."""
        return trust.user_shares(self.all(), self.val, share)

    def summary(self) -> dict[str, Any]:
        reasons = self.left_out_by_reason()
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test),
                "left_out": sum(reasons.values()), "left_out_by_reason": reasons,
                "skipped_without_signal": reasons.get("no_signal", 0),
                "skipped_not_replayable": reasons.get("not_replayable", 0)}


def has_signal(v: Verdict) -> bool:
    """Whether a run's feedback gives the ``feedback`` metric something to learn from:
    an expected answer or a score, or comments, labels or conflicting corrections for
    its judge to read as evidence."""
    return (v.expected is not None or v.score is not None or bool(v.comments)
            or bool(v.labels) or v.conflict is not None)


def expected_origin(example: Example) -> str:
    """Where an example's expected answer came from, in words: ``correction (feedback
    12, reviewer)``, ``comment of feedback 7: "Correct answer: Paris"``, ``approved
    output (feedback 3)``, or ``-`` (none)."""
    v = example.meta.get("verdict") or {}
    where = v.get("expected_from")
    if not where:
        return "-"
    record = v.get("expected_record")
    source = next((f.get("source") for f in example.feedback if f.get("id") == record), None)
    if where == "correction":
        return f"correction (feedback {record}" + (f", {source})" if source else ")")
    if where == "comment":
        return f"comment of feedback {record}: {json.dumps(v.get('expected_text'))}"
    return f"{where} (feedback {record})"


def _without_feedback(filters: ExampleFilter) -> tuple[str, str]:
    """(reason, what to show) of a run that is not excluded, has no feedback record and
    cannot be an example: the first check of ``load_examples`` it fails, inputs aside."""
    if filters.only_with_feedback:
        return "no_feedback", REASONS["no_feedback"]
    if filters.min_score is not None or filters.max_score is not None:
        return "score_filtered", REASONS["score_filtered"] + ": no score"
    return "no_signal", REASONS["no_signal"]


def _example_of(trace_id: str, attributes_json: str, fb: list[dict[str, Any]], mark: Any,
                golden: set[str], fractions: SplitFractions,
                verdict_of: Callable[[Sequence[Any], Any], Verdict]
                ) -> tuple[Example, Verdict, str] | None:
    """A run as an example, from its root's attributes and its feedback, with its
    verdict and inputs key (None: no inputs)."""
    attributes = json.loads(attributes_json)
    inputs = inputs_of(attributes)
    if inputs is None:
        return None
    output = loads(attributes.get("output.value"))
    v = verdict_of(fb, output)
    key = inputs_key(inputs)
    example = Example(id=trace_id, inputs=inputs, expected=v.expected, output=output,
                      feedback=tuple(fb), trace_id=trace_id,
                      split=split_of(key, fractions),
                      meta={"feedback_score": v.score, "verdict": v.to_dict(),
                            "user": user_of(attributes),
                            "mark": mark.mark if mark is not None else
                            ("golden" if trace_id in golden else None)})
    return example, v, key


def load_examples(store: Store, agent: str, *, filters: ExampleFilter = ExampleFilter(),
                  fractions: SplitFractions = DEFAULT_SPLIT,
                  min_examples: int = 6, need_signal: bool = True,
                  list_outside: bool = False,
                  source_weights: Mapping[str, float] | None = None) -> Dataset:
    """The examples of ``agent``'s production runs, split into train/val/test, and the
    runs left out with their reasons (see the module docstring).

    ``need_signal``: keep only runs with feedback to learn from (``has_signal``: what
    the ``feedback`` metric needs); a custom metric may not need it. Raises
    ``NotFoundError`` when a ``filters.golden`` id is not a production run of ``agent``,
    and NotEnoughExamples with the counts when fewer than ``min_examples`` remain or
    train or validation is empty (``min_examples=0``: no check; what ``examples`` lists).
    Runs outside --since/--until are counted (``Dataset.outside_window``); with
    ``list_outside`` each is also in ``left_out`` (``examples`` lists them; a nightly
    run over a long history need not read their ids). ``source_weights``: per-source
    weights of the feedback records in each run's score (``store.verdict``, rule 2).
    """
    with _collection_paused():
        return _load_examples(store, agent, filters, fractions, min_examples, need_signal,
                              list_outside, source_weights)


@contextmanager
def _collection_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while a dataset is built, or its left-out
    runs made: what is built survives, so the collections its allocations set off find
    nothing to free, and every few calls one of them was a full collection of the
    process (50 ms at 2k examples and 18k left-out runs). Reference counting still frees
    the temporaries; a cycle, if any, waits for the next collection."""
    if not gc.isenabled():  # paused already (by the caller, or by another thread)
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _load_examples(store: Store, agent: str, filters: ExampleFilter,
                   fractions: SplitFractions, min_examples: int, need_signal: bool,
                   list_outside: bool, source_weights: Mapping[str, float] | None
                   ) -> Dataset:
    # Without any feedback record a run can never be an example when feedback is asked
    # for: its reason is known without its attributes, which are read on demand.
    needs_feedback = need_signal or filters.only_with_feedback or \
        filters.min_score is not None or filters.max_score is not None
    runs = ProductionRuns(store, agent, filters.since, filters.until)
    # {trace id: (attributes, feedback records)} of the runs with feedback; the others'
    # attributes are read here only when every run is (no feedback asked for)
    with runs.reading():
        feedback = runs.feedback()
        if needs_feedback:
            roots, texts = runs.ids(), {}
        else:
            texts = dict(read_all := runs.with_attributes())
            roots = [trace_id for trace_id, _text in read_all]
        outside = runs.outside() if list_outside else []
        n_outside = len(outside) if list_outside else runs.count_outside()
    if not roots and not n_outside:
        raise NotEnoughExamples(f"no recorded runs of agent {agent!r} in the store; check "
                                "the name with `gepa-trace traces`")
    marks = marks_of(store, agent)
    golden = {t for t, m in marks.items() if m.mark == "golden"}
    in_window = set(roots) if filters.golden else set()
    asked = [t for t in dict.fromkeys(filters.golden) if t not in in_window]
    found = runs.attributes_of(asked)
    unknown = [t for t in asked if t not in found]
    if unknown:
        listed = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3
                                           else "")
        raise NotFoundError(f"golden trace id(s) not a recorded run of agent {agent!r} in "
                            f"the store {safe_url(store.url)}: {listed}")
    golden |= set(filters.golden)
    dataset = Dataset(agent=agent, outside_window=n_outside)
    for trace_id in outside:
        dataset._left.append(LeftOut(trace_id, "outside_window", REASONS["outside_window"]))

    def leave(example: Example | str, reason: str, detail: str = "", **more: Any) -> None:
        run = example if isinstance(example, Example) else None
        trace = run.id if run is not None else str(example)
        text = REASONS[reason] + (f": {detail}" if detail else "")
        dataset._left.append(LeftOut(trace, reason, text, run=run, **more))

    # A run's attributes come with it when it has feedback (or when every run is read);
    # a golden run is read in any case: its question goes to validation even when it is
    # left out.
    unread_golden = runs.attributes_of([t for t in roots if t in golden and t not in texts
                                        and t not in feedback] if golden else [])
    attributes_later = runs.attributes_later()
    verdict_of = verdicts(source_weights)

    def unread_example(trace_id: str) -> Example | None:
        text = attributes_later(trace_id)
        read = _example_of(trace_id, text, [], marks.get(trace_id), golden, fractions,
                           verdict_of) if text is not None else None
        return read[0] if read is not None else None

    dataset._unread = (*_without_feedback(filters), unread_example)
    usable: list[Example] = []
    keys: dict[str, str] = {}
    left = dataset._left
    # the runs with something to read or decide; the others (most of a long history)
    # have no feedback record and are left out unread, for the same reason
    read_or_marked = feedback.keys() | texts.keys() | unread_golden.keys() | marks.keys()
    for trace_id in roots:  # newest first
        if trace_id not in read_or_marked:
            left.append(trace_id)
            continue
        if trace_id in feedback:
            text, records = feedback[trace_id]
        elif trace_id in texts:
            text, records = texts[trace_id], []
        elif trace_id in unread_golden:
            text, records = unread_golden[trace_id], []
        else:
            mark = marks[trace_id]
            if mark.mark == "excluded":
                leave(trace_id, "excluded", mark.reason or "", read=unread_example)
            else:
                left.append(trace_id)
            continue
        mark = marks.get(trace_id)
        excluded = mark is not None and mark.mark == "excluded"
        read = _example_of(trace_id, text, records, mark, golden, fractions, verdict_of)
        if read is None:
            leave(trace_id, "excluded" if excluded else "no_inputs",
                  (mark.reason or "") if excluded else "")
            continue
        example, v, keys[trace_id] = read
        if excluded:
            leave(example, "excluded", mark.reason or "")
        elif filters.only_with_feedback and not v.records:
            leave(example, "no_feedback")
        elif (filters.min_score is not None
              and (v.score is None or v.score < filters.min_score)) or \
                (filters.max_score is not None
                 and (v.score is None or v.score > filters.max_score)):
            leave(example, "score_filtered", "no score" if v.score is None else f"{v.score:g}")
        elif need_signal and not has_signal(v):
            leave(example, "no_signal")
        else:
            usable.append(example)

    # a golden question is validation, asked by whichever run (even if its golden
    # run itself is left out)
    golden_keys = {key for trace, key in keys.items() if trace in golden}
    candidates: list[Example] = []
    if filters.dedupe_inputs:
        kept: dict[str, str] = {}
        # a golden run first, then the latest (``usable`` is newest first)
        for example in sorted(usable, key=lambda e: e.id not in golden):
            key = keys[example.id]
            if key in kept:
                leave(example, "duplicate", f"same inputs as {kept[key]}",
                      duplicate_of=kept[key])
                continue
            kept[key] = example.id
            candidates.append(example)
    else:
        candidates = list(usable)
    if filters.sample is not None and len(candidates) > filters.sample:
        ranked = sorted(candidates, key=lambda e: (e.id not in golden,
                                                   unit_hash(keys[e.id], "sample"), e.id))
        candidates = ranked[:filters.sample]
        for example in ranked[filters.sample:]:
            leave(example, "not_sampled")
    # a stable order, independent of arrival and of the (random) trace ids
    candidates.sort(key=lambda e: (unit_hash(keys[e.id], "order"), e.id))
    for example in candidates:
        split = "val" if keys[example.id] in golden_keys else example.split
        if split != example.split:
            example = dataclasses.replace(example, split=split)
        getattr(dataset, split).append(example)
    if min_examples:
        _check_enough(dataset, agent, len(roots) + n_outside, min_examples)
    return dataset


def _check_enough(dataset: Dataset, agent: str, runs: int, min_examples: int) -> None:
    total = len(dataset.all())
    if total >= min_examples and dataset.train and dataset.val:
        return
    reasons = dataset.left_out_by_reason()
    why = "; ".join(f"{n} {REASONS[r]}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    raise NotEnoughExamples(
        f"agent {agent!r}: {runs} recorded runs, {total} usable as examples "
        f"({reasons.get('no_signal', 0)} without feedback to learn from"
        + (f"; left out: {why}" if why else "") + f"); need at least {min_examples} with "
        f"some in train and validation (now train={len(dataset.train)}, "
        f"val={len(dataset.val)}, test={len(dataset.test)}). Record more runs or "
        "feedback, or widen --since; `gepa-trace examples` lists them.")


def output_text(output: Any) -> str:
    """The answer text of an agent's output (a string, a message, or a dict with one)."""
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    content = getattr(output, "content", None)
    if isinstance(content, str):
        return content
    if isinstance(output, dict):
        for key in ("answer", "output", "text", "result", "response", "content"):
            if key in output:
                return output_text(output[key])
        strings = [v for v in output.values() if isinstance(v, str)]
        if len(strings) == 1:
            return strings[0]
        messages = output.get("messages")
        if isinstance(messages, list) and messages:
            return output_text(messages[-1])
    return json.dumps(output, default=str, ensure_ascii=False)
