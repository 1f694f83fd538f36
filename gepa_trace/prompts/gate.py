"""The export gate: is the best candidate's gain over the seed on held-out runs real?

A paired bootstrap over held-out examples: resample the per-example differences
(best - seed) with replacement, and take the percentile interval of their mean. The
gate passes only when the interval's lower bound is above zero.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from gepa_trace.errors import ConfigError


@dataclass(frozen=True)
class GateResult:
    n: int
    seed_mean: float
    best_mean: float
    gain: float
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int

    @property
    def significant(self) -> bool:
        return self.ci_low > 0

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}

    def sentence(self) -> str:
        pct = f"{self.confidence:.0%}"
        return (f"held-out gain {self.gain:+.3f} ({self.seed_mean:.3f} -> {self.best_mean:.3f}, "
                f"n={self.n}), {pct} interval [{self.ci_low:+.3f}, {self.ci_high:+.3f}]")


def paired_bootstrap(seed_scores: Sequence[float], best_scores: Sequence[float], *,
                     confidence: float = 0.95, resamples: int = 10_000,
                     seed: int = 0) -> GateResult:
    """Percentile interval of the mean paired gain ``best - seed``."""
    if len(seed_scores) != len(best_scores):
        raise ConfigError(f"paired bootstrap needs paired scores: {len(seed_scores)} seed "
                          f"scores vs {len(best_scores)} best scores")
    if not seed_scores:
        raise ConfigError("no held-out examples to test the gain on")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1, got {confidence}")
    if resamples < 100:
        raise ConfigError(f"resamples must be at least 100, got {resamples}")
    diffs = [float(b) - float(s) for s, b in zip(seed_scores, best_scores)]
    if any(not math.isfinite(d) for d in diffs):
        raise ConfigError("held-out scores must be finite numbers")
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = means[max(0, math.floor(tail * resamples))]
    high = means[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
    return GateResult(n=n, seed_mean=sum(seed_scores) / n, best_mean=sum(best_scores) / n,
                      gain=sum(diffs) / n, ci_low=low, ci_high=high, confidence=confidence,
                      resamples=resamples)
