"""Simulated production traffic of the expense desk: the agent files users' receipts
under ``gepa_trace.instrument()``, and some users leave feedback the way users do.

The world's truth is used here only to play what users know; the optimizer reads the
recorded feedback. Per run, decided by ``seed`` alone (the same call records the same
receipts and the same feedback), mirroring ``gepa_trace.demo.traffic``:

- ``feedback_rate`` (default 0.5): the share of runs whose user gives any feedback.
- Thumbs up (1) or down (0) follows the truth of the ledger line, flipped with
  probability ``noise`` (0.1).
- A thumbs down on a wrong line carries: the right ledger line as ``expected`` (0.35; a
  tenth of those a wrong line with another total), the right line in words ("Correct
  answer: ...", 0.15), a vague comment ("wrong amount", "this is not right", 0.30),
  or nothing more (0.20). A misjudged right line gets a vague comment or nothing.
- A thumbs up carries a short thanks 15% of the time.
- ``review_rate`` (0.05) of the runs are checked by a reviewer (``source="reviewer"``)
  who always knows the right line.
"""

from __future__ import annotations

import random
from typing import Any

from gepa_trace.optimizer.protocols import Example
from gepa_trace.prompts import PromptSet
from gepa_trace.worlds.receipts import AGENT_NAME, SEED_PROMPTS, build_agent, examples, metric
from gepa_trace.worlds.users import check_rates, review, traced_runs, user_feedback

PHRASINGS = ["Correct answer: {}", "the answer should be {}"]
VAGUE = ["wrong", "this is not right", "wrong amount", "please fix this entry"]
THANKS = ["thanks!", "perfect", "great"]


def _wrong_line(right: str, rng: random.Random) -> str:
    date, vendor, amount, currency = right.split(" | ")
    cents = round(float(amount) * 100) + rng.choice([-100, 100, 50])
    return f"{date} | {vendor} | {cents // 100}.{cents % 100:02d} | {currency}"


def _user_feedback(example: Example, output: Any, rng: random.Random,
                   noise: float) -> dict[str, Any]:
    return user_feedback(metric(example, output).score >= 1.0, str(example.expected), rng,
                         noise, vague=VAGUE, phrasings=PHRASINGS, thanks=THANKS,
                         wrong=lambda r: _wrong_line(str(example.expected), r))


def record_traffic(n: int, *, store: Any = None, seed: int = 0, feedback_rate: float = 0.5,
                   model: Any = "gepa-sim/task", threads: int = 8,
                   prompts: PromptSet = SEED_PROMPTS, noise: float = 0.1,
                   review_rate: float = 0.05) -> list[str]:
    """Run the agent on ``n`` receipts (``examples(n, seed)``), traced into ``store``;
    returns the trace ids in receipt order. Feedback is recorded after all runs are
    flushed; a run that raises is traced as an error and gets none. The instrumentation
    stays active for the caller."""
    check_rates(feedback_rate=feedback_rate, noise=noise, review_rate=review_rate)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    import gepa_trace as gt

    batch = examples(n, seed)
    gt.instrument(store=store, service_name=AGENT_NAME)
    results = traced_runs(AGENT_NAME, build_agent(prompts, model=model),
                          [ex.inputs for ex in batch],
                          [f"user-{seed}-{i:04d}" for i in range(len(batch))], threads)

    rng = random.Random(f"gepa-trace-receipts-feedback:{seed}")
    for example, (trace_id, output) in zip(batch, results):
        given = rng.random() < feedback_rate
        reviewed = rng.random() < review_rate
        if output is None:
            continue
        if given:
            gt.record_feedback(trace_id, name="user", source="user", store=store,
                               **_user_feedback(example, output, rng, noise))
        if reviewed:
            gt.record_feedback(trace_id, store=store, **review(
                metric(example, output).score >= 1.0, str(example.expected)))
    return [trace_id for trace_id, _ in results]
