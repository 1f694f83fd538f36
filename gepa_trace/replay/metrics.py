"""Metrics: ``metric(example, output, trace) -> float | Score``.

Built in: ``feedback`` (the production feedback itself: a correction, or a confirmed
answer, is the expected answer), ``exact_match``, ``contains`` and ``judge`` (an LLM
judge with a rubric). A user metric is named ``package.module:function``.
"""

from __future__ import annotations

import importlib
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from gepa_trace.errors import ConfigError
from gepa_trace.optimizer.protocols import Example, Score
from gepa_trace.replay.dataset import output_text

MetricFn = Callable[[Example, Any, Any], "float | Score"]


def normalize(text: Any) -> str:
    """Lower case, no accents, punctuation or articles, single spaces."""
    text = unicodedata.normalize("NFKD", output_text(text)).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s]", " ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _expected_or_none(example: Example) -> str | None:
    return None if example.expected is None else output_text(example.expected)


def exact_match(example: Example, output: Any, trace: Any = None) -> Score:
    expected = _expected_or_none(example)
    if expected is None:
        return Score(0.0, "no expected answer is known for this input")
    got = output_text(output)
    if normalize(got) == normalize(expected):
        return Score(1.0, "correct")
    return Score(0.0, f"expected {expected!r}, got {got[:200]!r}")


def contains(example: Example, output: Any, trace: Any = None) -> Score:
    expected = _expected_or_none(example)
    if expected is None:
        return Score(0.0, "no expected answer is known for this input")
    got = output_text(output)
    if normalize(expected) and normalize(expected) in normalize(got):
        return Score(1.0, "the answer contains the expected one")
    return Score(0.0, f"expected the answer to contain {expected!r}, got {got[:200]!r}")


def feedback(example: Example, output: Any, trace: Any = None) -> Score:
    """Score against what users said about the recorded run.

    With a known expected answer (a correction, or a recorded answer users approved):
    exact match, with the correction quoted in the feedback. Without one, the users
    rejected the recorded answer: repeating it scores 0, anything else 0.5 (unknown).
    """
    if example.expected is not None:
        result = exact_match(example, output)
        if result.score < 1:
            comments = "; ".join(str(f["comment"]) for f in example.feedback if f.get("comment"))
            note = f" (user feedback: {comments})" if comments else ""
            return Score(0.0, result.feedback + note)
        return result
    got = output_text(output)
    if normalize(got) == normalize(example.output):
        return Score(0.0, "users rejected this exact answer in production")
    return Score(0.5, "users rejected the recorded answer; this one differs, but its "
                      "correctness is unknown")


class Judge:
    """An LLM judge: scores an output against a rubric with the run's evidence.

    The reply is read as ``score: <0..1>`` and ``reason: ...`` lines; an unreadable reply
    scores 0 with that fact as the feedback.
    """

    def __init__(self, lm: Callable[[str], str], rubric: str = "The answer is correct, "
                 "concise and supported by the evidence."):
        self.lm = lm
        self.rubric = rubric

    def prompt(self, example: Example, output: Any) -> str:
        evidence = []
        if example.expected is not None:
            evidence.append(f"Expected answer (from user feedback): {output_text(example.expected)}")
        for fb in example.feedback:
            parts = [f"score={fb['score']}" if fb.get("score") is not None else "",
                     f"label={fb['label']}" if fb.get("label") else "",
                     f"comment={fb['comment']}" if fb.get("comment") else ""]
            evidence.append("User feedback on the recorded answer "
                            f"{output_text(example.output)!r}: " + ", ".join(p for p in parts if p))
        return ("You are a strict judge. Score the output from 0 to 1 against the rubric, "
                "using the evidence.\n\n"
                f"Rubric: {self.rubric}\n\nInput: {dict(example.inputs)}\n\n"
                "Evidence:\n" + ("\n".join(f"- {e}" for e in evidence) or "- none") +
                f"\n\nOutput to judge:\n{output_text(output)}\n\n"
                "Reply with two lines:\nscore: <a number from 0 to 1>\nreason: <one sentence>")

    def __call__(self, example: Example, output: Any, trace: Any = None) -> Score:
        reply = self.lm(self.prompt(example, output))
        return parse_judgement(reply)


_SCORE = re.compile(r"score\s*[:=]\s*([01](?:\.\d+)?|\.\d+)", re.IGNORECASE)
_REASON = re.compile(r"reason\s*[:=]\s*(.+)", re.IGNORECASE)


def parse_judgement(reply: str) -> Score:
    match = _SCORE.search(reply or "")
    if not match:
        return Score(0.0, f"the judge's reply had no score: {(reply or '')[:120]!r}")
    value = min(1.0, max(0.0, float(match.group(1))))
    reason = _REASON.search(reply)
    return Score(value, reason.group(1).strip() if reason else "")


BUILTIN = {"feedback": feedback, "exact_match": exact_match, "contains": contains}


def load_object(spec: str, what: str) -> Any:
    """``package.module:attribute`` -> the object, with an error naming ``spec``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {spec!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself failing to import
        raise ConfigError(f"{what} {spec!r} cannot be imported: "
                          f"{type(exc).__name__}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{what} {spec!r}: module {module_name!r} has no "
                          f"attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"{what} {spec!r} is not callable")
    return obj


class CheckedMetric:
    """A metric whose every result goes through ``Score.checked`` (the one contract
    check): a string, None, NaN or a score outside ``[low, high]`` raises
    ``MetricContractError``, which the evaluator records as the rollout's error, never
    as a score. Picklable when the metric is (worker processes rebuild it anyway)."""

    def __init__(self, metric: MetricFn, low: float = 0.0, high: float = 1.0):
        self.metric, self.low, self.high = metric, low, high

    def __call__(self, example: Example, output: Any, trace: Any = None) -> Score:
        return Score.checked(self.metric(example, output, trace), self.low, self.high)


def resolve_metric(spec: str | MetricFn, *, judge_lm: Callable[[str], str] | None = None,
                   rubric: str | None = None) -> MetricFn:
    """A metric from a builtin name, ``judge``, ``module:function`` or a callable."""
    if callable(spec):
        return spec
    if spec in BUILTIN:
        return BUILTIN[spec]
    if spec == "judge":
        if judge_lm is None:
            raise ConfigError("the judge metric needs a judge LM (--judge-lm)")
        return Judge(judge_lm, rubric) if rubric else Judge(judge_lm)
    return load_object(spec, "metric")
