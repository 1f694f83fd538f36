"""Simulated users' feedback on one run, shared by the simulated worlds (the demo's
``demo.traffic`` and the expense desk's ``worlds.receipt_traffic``).

A user is happy with a right answer and unhappy with a wrong one, except for a share of
misjudgements (``noise``). A happy user gives a thumbs up, sometimes with thanks. An
unhappy one gives a thumbs down and, on a wrong answer, a correction (``expected``; a
tenth of them wrong themselves), a correction written as a comment, a vague comment, or
nothing; on a right answer (a misjudgement) a vague comment or nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

#: Shares of what a thumbs down on a wrong answer carries (the rest: nothing more).
CORRECTION_RATE = 0.35
WRONG_CORRECTION_RATE = 0.10
PHRASED_RATE = 0.15
VAGUE_RATE = 0.30
THANKS_RATE = 0.15


def user_feedback(right: bool, expected: str, rng: random.Random, noise: float, *,
                  vague: Sequence[str], phrasings: Sequence[str], thanks: Sequence[str],
                  wrong: Callable[[random.Random], str]) -> dict[str, Any]:
    """The ``record_feedback`` fields of one user's feedback (see the module docstring);
    ``wrong(rng)``: an answer the user wrongly believes right. Draws from ``rng`` in a
    fixed order, so a world's traffic is the same for the same seed."""
    if right != (rng.random() < noise):
        return {"score": 1.0, "comment": rng.choice(thanks) if rng.random() < THANKS_RATE
                else None}
    said = rng.choice(vague)
    roll = rng.random()
    if right:  # a misjudgement: the user does not know better
        return {"score": 0.0, "comment": said if roll < 0.5 else None}
    if roll < CORRECTION_RATE:
        mistaken = rng.random() < WRONG_CORRECTION_RATE
        return {"score": 0.0, "expected": wrong(rng) if mistaken else expected}
    roll -= CORRECTION_RATE
    if roll < PHRASED_RATE:
        return {"score": 0.0, "comment": rng.choice(phrasings).format(expected)}
    roll -= PHRASED_RATE
    return {"score": 0.0, "comment": said if roll < VAGUE_RATE else None}


def review(right: bool, expected: str) -> dict[str, Any]:
    """The ``record_feedback`` fields of a reviewer's verdict on one run: approved, or
    rejected with the right answer."""
    return {"score": 1.0 if right else 0.0, "name": "review", "source": "reviewer",
            "expected": None if right else expected}


def check_rates(**rates: float) -> None:
    """Raise ValueError naming the first rate outside [0, 1]."""
    for name, value in rates.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value!r}")


def traced_runs(agent_name: str, agent: Any, inputs: Sequence[dict[str, Any]],
                users: Sequence[str], threads: int) -> list[tuple[str, Any]]:
    """Run ``agent`` on each of ``inputs`` as one traced production run of
    ``agent_name`` (``gt.agent_run``, with the end user's ``user.id``), ``threads`` at a
    time; (trace id, output) in input order, output None when the agent raised (the run
    is traced as an error). The active instrumentation is flushed before returning."""
    from concurrent.futures import ThreadPoolExecutor

    from opentelemetry import trace as trace_api

    import gepa_trace as gt
    from gepa_trace.collectors.instrument import active_instrumentation

    def one(given: dict[str, Any], user: str) -> tuple[str, Any]:
        with gt.agent_run(agent_name, inputs=dict(given)) as run:
            trace_api.get_current_span().set_attribute("user.id", user)
            try:
                output = agent.invoke(dict(given))
            except Exception:  # noqa: BLE001 - traced as an error by agent_run; traffic goes on
                output = None
            run.set_outputs(output)
        return str(run.trace_id), output

    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = list(pool.map(one, inputs, users))
    inst = active_instrumentation()
    if inst is not None:
        inst.force_flush()
    return results
