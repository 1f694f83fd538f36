"""Epoch-shuffled minibatches of training examples.

Each epoch is a fresh shuffle of the training ids (seeded by the run's seed and the
epoch number), padded with its own first ids to a multiple of the minibatch size, then
cut into consecutive minibatches. ``batch(n)`` is a pure function of ``n``, so a resumed
run draws exactly the minibatches the killed one would have.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gepa_trace.errors import ConfigError


class EpochSampler:
    def __init__(self, example_ids: Sequence[str], size: int, seed: int):
        if not example_ids:
            raise ConfigError("the optimizer needs at least one training example")
        if size < 1:
            raise ConfigError(f"minibatch size must be >= 1, got {size}")
        self.ids = list(example_ids)
        self.size = min(size, len(self.ids))
        self.seed = seed
        padded = len(self.ids) + (-len(self.ids)) % self.size
        self.per_epoch = padded // self.size
        self._epochs: dict[int, list[str]] = {}

    def _epoch(self, epoch: int) -> list[str]:
        order = self._epochs.get(epoch)
        if order is None:
            order = list(self.ids)
            random.Random(f"minibatch:{self.seed}:{epoch}").shuffle(order)
            order += order[: (-len(order)) % self.size]
            self._epochs = {epoch: order}  # only the current epoch is kept
        return order

    def batch(self, n: int) -> list[str]:
        """The ``n``-th minibatch (0-based) of the run."""
        epoch, index = divmod(n, self.per_epoch)
        order = self._epoch(epoch)
        return order[index * self.size:(index + 1) * self.size]
