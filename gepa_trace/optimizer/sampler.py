"""Epoch-shuffled minibatches of training examples, with a cap on each end user's share.

Each epoch is a fresh shuffle of the training ids (seeded by the run's seed and the
epoch number), padded with its own first ids to a multiple of the minibatch size, then
cut into consecutive minibatches. ``batch(n)`` is a pure function of ``n``, so a resumed
run draws exactly the minibatches the killed one would have.

The examples a reflection sees are one minibatch, so one end user could fill it. Given
each example's user (None: unknown, and each unknown example counts as a user of its
own), no user has more than ``user_cap`` = ``max(1, floor(max_user_share * size))``
examples in one minibatch. An epoch whose shuffle keeps that cap is used as it is (so
with no known users, or a share of 1, the minibatches are exactly the plain shuffle's).
Otherwise the epoch is dealt again: its shuffled ids grouped by user (users in the
order the shuffle first meets them) and dealt round-robin over the epoch's minibatches,
which spreads each user's examples evenly; each minibatch is then filled up with ids
taken in turn from the shuffle whose user is still under the cap. Every example is still in every
epoch. When one user has more examples than the cap allows in ``ceil(n / size)``
minibatches, an epoch has as many more minibatches as that user needs, filled with the
other users' examples. When too few users exist to fill a minibatch at all within the
cap, the cap rises to the smallest that can (``cap``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from gepa_trace.errors import ConfigError


def user_cap(size: int, max_user_share: float) -> int:
    """The most examples of one user in a minibatch of ``size``."""
    return max(1, math.floor(max_user_share * size + 1e-9))


class EpochSampler:
    def __init__(self, example_ids: Sequence[str], size: int, seed: int,
                 users: Sequence[str | None] | None = None, max_user_share: float = 1.0):
        if not example_ids:
            raise ConfigError("the optimizer needs at least one training example")
        if size < 1:
            raise ConfigError(f"minibatch size must be >= 1, got {size}")
        if not 0 < max_user_share <= 1:
            raise ConfigError(f"max_user_share must be in (0, 1], got {max_user_share!r}")
        if users is not None and len(users) != len(example_ids):
            raise ConfigError(f"{len(users)} users given for {len(example_ids)} examples")
        self.ids = list(example_ids)
        self.size = min(size, len(self.ids))
        self.seed = seed
        given = list(users) if users is not None else [None] * len(self.ids)
        self.user = {i: ("user", u) if u is not None else ("example", i)
                     for i, u in zip(self.ids, given)}
        counts: dict[tuple[str, str], int] = {}
        for key in self.user.values():
            counts[key] = counts.get(key, 0) + 1
        cap = user_cap(self.size, max_user_share)
        while sum(min(n, cap) for n in counts.values()) < self.size:
            cap += 1  # too few users to fill a minibatch within the cap
        self.cap = cap
        self._plain_per_epoch = math.ceil(len(self.ids) / self.size)
        self.per_epoch = max(self._plain_per_epoch,
                             max(math.ceil(n / cap) for n in counts.values()))
        self._epochs: dict[int, list[str]] = {}

    def _epoch(self, epoch: int) -> list[str]:
        order = self._epochs.get(epoch)
        if order is None:
            shuffled = list(self.ids)
            random.Random(f"minibatch:{self.seed}:{epoch}").shuffle(shuffled)
            order = shuffled + shuffled[: (-len(shuffled)) % self.size]
            if self.per_epoch != self._plain_per_epoch or not self._within_cap(order):
                order = self._dealt(shuffled)
            self._epochs = {epoch: order}  # only the current epoch is kept
        return order

    def _within_cap(self, order: list[str]) -> bool:
        for start in range(0, len(order), self.size):
            counts: dict[tuple[str, str], int] = {}
            for i in order[start:start + self.size]:
                counts[self.user[i]] = counts.get(self.user[i], 0) + 1
                if counts[self.user[i]] > self.cap:
                    return False
        return True

    def _dealt(self, shuffled: list[str]) -> list[str]:
        """The epoch's ids dealt so that no minibatch has more than ``cap`` of one user
        (see the module docstring)."""
        groups: dict[tuple[str, str], list[str]] = {}
        for i in shuffled:
            groups.setdefault(self.user[i], []).append(i)
        batches: list[list[str]] = [[] for _ in range(self.per_epoch)]
        for n, i in enumerate(i for group in groups.values() for i in group):
            batches[n % self.per_epoch].append(i)
        cursor = 0  # fillers are taken in turn from the shuffle, not always its first
        for batch in batches:
            counts: dict[tuple[str, str], int] = {}
            for i in batch:
                counts[self.user[i]] = counts.get(self.user[i], 0) + 1
            start = cursor
            for step in range(len(shuffled)):
                if len(batch) >= self.size:
                    break
                i = shuffled[(start + step) % len(shuffled)]
                if i not in batch and counts.get(self.user[i], 0) < self.cap:
                    batch.append(i)
                    counts[self.user[i]] = counts.get(self.user[i], 0) + 1
                    cursor = (start + step + 1) % len(shuffled)
        return [i for batch in batches for i in batch]

    def batch(self, n: int) -> list[str]:
        """The ``n``-th minibatch (0-based) of the run."""
        epoch, index = divmod(n, self.per_epoch)
        order = self._epoch(epoch)
        return order[index * self.size:(index + 1) * self.size]
