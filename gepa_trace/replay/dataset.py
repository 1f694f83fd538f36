"""Examples from the store: the root spans of one agent's production runs.

Each example is one recorded run: its input, its output, the feedback users gave, and
the expected answer when the feedback tells it (a correction comment, or a positive
verdict on the recorded output). Optimizer rollouts are traces too, but they are never
examples: only spans with no optimization run id are read.

The split into train / validation / held-out test is a function of the run's inputs
alone (a hash of their JSON), so a question held out tonight is still held out
tomorrow, whatever other runs arrive, and the same question asked twice never lands in
training and in the held-out test at once. Examples come in the order of that hash too,
so the same recorded questions give the same dataset, whatever their trace ids.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select

from gepa_trace.errors import ConfigError, GepaTraceError
from gepa_trace.optimizer.protocols import Example
from gepa_trace.store import SpanRow, Store
from gepa_trace.store.queries import feedback_for_traces

_SPANS = SpanRow.__table__


class NotEnoughExamples(GepaTraceError):
    """Too few recorded runs, or none with a usable signal, to optimize from."""


@dataclass(frozen=True)
class ExampleFilter:
    """Which recorded runs become examples."""

    since: float | None = None  # epoch seconds
    until: float | None = None
    only_with_feedback: bool = False
    min_score: float | None = None  # on the mean feedback score
    max_score: float | None = None
    sample: int | None = None
    dedupe_inputs: bool = True


@dataclass(frozen=True)
class SplitFractions:
    """Shares of train / validation / held-out test.

    Validation is small on purpose: every accepted candidate is scored on all of it, so
    its size decides how many candidates a budget can afford. On the demo world with 300
    runs and 600 rollouts (seed to held-out, one run per traffic seed): 25% validation
    ended at 0.50 and 0.71; 15% at 0.76 to 1.0 (two of six below 0.8); 10% at 0.88 to
    1.0 (four of four). The held-out share is large because it is measured once per run
    and decides the export gate.
    """

    train: float = 0.5
    val: float = 0.1
    test: float = 0.4

    def __post_init__(self) -> None:
        parts = (self.train, self.val, self.test)
        if any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
            raise ConfigError(f"split fractions must be non-negative and sum to 1, got "
                              f"train={self.train} val={self.val} test={self.test}")


@dataclass
class Dataset:
    """Examples of one agent, split by trace id."""

    agent: str
    train: list[Example] = field(default_factory=list)
    val: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    skipped_without_signal: int = 0
    skipped_not_replayable: int = 0  # log-only replay: no recorded call re-renders

    def keep(self, usable: Any) -> None:
        """Keep only the examples ``usable(example)`` accepts, counting the others."""
        before = len(self.all())
        self.train = [e for e in self.train if usable(e)]
        self.val = [e for e in self.val if usable(e)]
        self.test = [e for e in self.test if usable(e)]
        self.skipped_not_replayable += before - len(self.all())

    def all(self) -> list[Example]:
        return self.train + self.val + self.test

    def summary(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test),
                "skipped_without_signal": self.skipped_without_signal,
                "skipped_not_replayable": self.skipped_not_replayable}


def unit_hash(text: str, salt: str = "split") -> float:
    """A number in [0, 1) that depends only on ``text`` (and the salt)."""
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def inputs_key(inputs: Any) -> str:
    """The text a run's split is drawn from: its inputs as canonical JSON."""
    return json.dumps(inputs, sort_keys=True, default=str, ensure_ascii=False)


def split_of(key: str, fractions: SplitFractions = SplitFractions()) -> str:
    """train | val | test for a run whose inputs have ``inputs_key`` ``key``."""
    u = unit_hash(key)
    if u < fractions.test:
        return "test"
    if u < fractions.test + fractions.val:
        return "val"
    return "train"


_CORRECTION = re.compile(
    r"(?:should(?: have)? be(?:en)?|correct answer (?:is|was)|right answer (?:is|was)|"
    r"the answer (?:is|was)|expected(?: answer)?(?: is| was|:)?)\s*[:\-]?\s*"
    r"[\"'“]?(?P<answer>[^\"'”.!?\n]+)", re.IGNORECASE)


def expected_from_comment(comment: str | None) -> str | None:
    """The answer a correction comment gives ("the answer should be France" -> "France")."""
    if not comment:
        return None
    match = _CORRECTION.search(comment)
    if not match:
        return None
    answer = re.split(r",?\s+(?:not|instead|rather)\b", match.group("answer"))[0]
    answer = answer.strip().strip(",;:")
    return answer or None


def _loads(text: Any) -> Any:
    if text is None:
        return None
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _inputs_of(attributes: dict[str, Any]) -> dict[str, Any] | None:
    value = _loads(attributes.get("input.value"))
    if value is None:
        return None
    if isinstance(value, dict):
        # LangGraph/LCEL wrap inputs as {"input": {...}} in some versions
        return value
    return {"input": value}


def _expected(output: Any, feedback: list[dict[str, Any]]) -> Any:
    for fb in reversed(feedback):  # the latest correction wins
        answer = expected_from_comment(fb.get("comment"))
        if answer:
            return answer
    scores = [fb["score"] for fb in feedback if fb.get("score") is not None]
    if scores and sum(scores) / len(scores) >= 0.5 and output is not None:
        return output  # the user confirmed the recorded answer
    return None


def load_examples(store: Store, agent: str, *, filters: ExampleFilter = ExampleFilter(),
                  fractions: SplitFractions = SplitFractions(),
                  min_examples: int = 6, need_signal: bool = True) -> Dataset:
    """The examples of ``agent``'s production runs, split into train/val/test.

    ``need_signal``: keep only runs whose feedback gives an expected answer or a score
    (what the ``feedback`` metric needs); a custom metric may not need it.
    Raises NotEnoughExamples with the counts when fewer than ``min_examples`` remain.
    """
    query = select(_SPANS.c.trace_id, _SPANS.c.attributes, _SPANS.c.start_ns).where(and_(
        _SPANS.c.agent == agent, _SPANS.c.parent_span_id.is_(None), _SPANS.c.run_id.is_(None)))
    if filters.since is not None:
        query = query.where(_SPANS.c.start_ns >= int(filters.since * 1e9))
    if filters.until is not None:
        query = query.where(_SPANS.c.start_ns < int(filters.until * 1e9))
    with store.read() as conn:
        roots = conn.execute(query.order_by(_SPANS.c.start_ns.desc())).all()
    if not roots:
        raise NotEnoughExamples(f"no recorded runs of agent {agent!r} in the store"
                                + (" in that time window" if filters.since or filters.until else "")
                                + "; check the name with `gepa-trace traces`")
    feedback = {trace: [f.to_dict() for f in found] for trace, found in
                feedback_for_traces(store, [r.trace_id for r in roots]).items()}
    dataset = Dataset(agent=agent)
    seen_inputs: set[str] = set()
    candidates: list[Example] = []
    keys: dict[str, str] = {}
    for root in roots:  # newest first, so de-duplication keeps the latest run
        attributes = json.loads(root.attributes)
        inputs = _inputs_of(attributes)
        if inputs is None:
            continue
        fb = feedback.get(root.trace_id, [])
        scores = [f["score"] for f in fb if f.get("score") is not None]
        mean = sum(scores) / len(scores) if scores else None
        if filters.only_with_feedback and not fb:
            continue
        if filters.min_score is not None and (mean is None or mean < filters.min_score):
            continue
        if filters.max_score is not None and (mean is None or mean > filters.max_score):
            continue
        key = inputs_key(inputs)
        if filters.dedupe_inputs:
            if key in seen_inputs:
                continue
            seen_inputs.add(key)
        output = _loads(attributes.get("output.value"))
        expected = _expected(output, fb)
        if need_signal and expected is None and mean is None:
            dataset.skipped_without_signal += 1
            continue
        candidates.append(Example(id=root.trace_id, inputs=inputs, expected=expected,
                                  output=output, feedback=tuple(fb), trace_id=root.trace_id,
                                  split=split_of(key, fractions),
                                  meta={"feedback_score": mean}))
        keys[root.trace_id] = key
    if filters.sample is not None and len(candidates) > filters.sample:
        candidates = sorted(candidates, key=lambda e: (unit_hash(keys[e.id], "sample"),
                                                       e.id))[:filters.sample]
    # a stable order, independent of arrival and of the (random) trace ids
    candidates.sort(key=lambda e: (unit_hash(keys[e.id], "order"), e.id))
    for example in candidates:
        getattr(dataset, example.split).append(example)
    total = len(candidates)
    if total < min_examples or not dataset.train or not dataset.val:
        raise NotEnoughExamples(
            f"agent {agent!r}: {len(roots)} recorded runs, {total} usable as examples "
            f"({dataset.skipped_without_signal} without feedback to learn from); need at "
            f"least {min_examples} with some in train and validation "
            f"(now train={len(dataset.train)}, val={len(dataset.val)}, test={len(dataset.test)})."
            " Record more runs or feedback, or widen --since.")
    return dataset


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
