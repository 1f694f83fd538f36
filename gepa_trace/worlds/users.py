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
