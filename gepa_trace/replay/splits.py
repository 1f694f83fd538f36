"""Which split a recorded run falls in: train, validation or held-out test.

The split is a function of the run's inputs alone (a hash of their canonical JSON), so
a question held out tonight is still held out tomorrow, whatever other runs arrive, and
the same question asked twice never lands in training and in the held-out test at once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from gepa_trace.errors import ConfigError


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


def unit_hash(text: str, salt: str = "split") -> float:
    """A number in [0, 1) that depends only on ``text`` (and the salt)."""
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def inputs_key(inputs: Any) -> str:
    """The text a run's split is drawn from: its inputs as canonical JSON."""
    return _CANONICAL.encode(inputs)


# json.dumps(inputs, sort_keys=True, default=str, ensure_ascii=False), made once
_CANONICAL = json.JSONEncoder(sort_keys=True, default=str, ensure_ascii=False)


#: The split when none is given (``--split``).
DEFAULT_SPLIT = SplitFractions()


def split_of(key: str, fractions: SplitFractions = DEFAULT_SPLIT) -> str:
    """train | val | test for a run whose inputs have ``inputs_key`` ``key``."""
    u = unit_hash(key)
    if u < fractions.test:
        return "test"
    if u < fractions.test + fractions.val:
        return "val"
    return "train"
