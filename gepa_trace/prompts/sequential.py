"""Is the canary better or worse than production? A test that may be read every night.

Reading an ordinary test again and again as feedback accumulates (every night, until it
says "significant") makes false alarms far more likely than its nominal level. This
module uses a mixture sequential probability ratio test (mSPRT, a normal mixture over
the difference of mean scores): its interval is valid at every look at once, so
``canary status`` and the nightly policy may read it as often as they like and still be
wrong, over the whole life of a canary, at most ``alpha`` of the time (for scores in
0..1, up to the normal approximation; ``bench/bench_canary.py`` measures it on A/A
canaries).

The variance is that of a thumbs up/down at the pooled mean of both arms, p(1-p)
(shrunk toward 1/2, never 0): the largest a score in 0..1 with that mean can have, and
the right one when the arms do not differ, which is when a false alarm could happen.
Each arm's own variance instead lets a small canary with a lucky streak (30 thumbs up
in a row at a 95% rate) look certain: measured on A/A canaries, that raised false alarms
above the nominal level; the pooled variance keeps them below it in every case
``bench/bench_canary.py`` tries, at the price of some power on graded scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: The mixture's scale: the size of a difference in mean score the test is tuned to
#: find quickly (a tenth of the 0..1 range). Any value keeps the test valid.
MIXTURE_SCALE = 0.1
#: Rated runs each arm needs before the test decides anything.
MIN_RUNS = 30


@dataclass(frozen=True)
class Comparison:
    """Canary minus control, on production feedback. ``decision``: better | worse |
    undecided | too few runs; ``low``/``high`` bound the difference of mean scores at
    ``1 - alpha``, valid however often it is read."""

    canary_runs: int
    control_runs: int
    canary_mean: float | None
    control_mean: float | None
    difference: float | None
    low: float | None
    high: float | None
    alpha: float
    decision: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(canary: Sequence[float], control: Sequence[float], *, alpha: float = 0.05,
            min_runs: int = MIN_RUNS, scale: float = MIXTURE_SCALE) -> Comparison:
    """The always-valid comparison of two arms' run scores (each in 0..1)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
    n, m = len(canary), len(control)
    mean_a = sum(canary) / n if n else None
    mean_b = sum(control) / m if m else None
    if n < min_runs or m < min_runs:
        diff = mean_a - mean_b if n and m else None
        return Comparison(n, m, mean_a, mean_b, diff, None, None, alpha, "too few runs")
    diff = mean_a - mean_b
    pooled = (sum(canary) + sum(control) + 1) / (n + m + 2)
    v = pooled * (1 - pooled) * (1 / n + 1 / m)
    t2 = scale * scale
    # {d : mixture likelihood ratio of d < 1/alpha}: the set no look can reject
    half = math.sqrt(2 * v * (v + t2) / t2 * (math.log(1 / alpha) + 0.5 * math.log((v + t2) / v)))
    low, high = diff - half, diff + half
    decision = "better" if low > 0 else "worse" if high < 0 else "undecided"
    return Comparison(n, m, mean_a, mean_b, diff, low, high, alpha, decision)


__all__ = ["MIN_RUNS", "MIXTURE_SCALE", "Comparison", "compare"]
