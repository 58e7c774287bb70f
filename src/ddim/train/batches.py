"""What a training step sees: its batch of images, timesteps and noise, as a function of the step.

Step ``s`` (counted from 1) takes samples ``(s-1)*B .. s*B-1`` of an endless stream in which
epoch ``e`` is a permutation of the data set seeded by ``(seed, e)``; its timesteps, noise
and flips come from one generator seeded by ``(seed, s)``, and a conditional run's label
dropout from another. So any step's batch can be made again from the step alone (exact
resume), whatever the number of processes.
"""

from __future__ import annotations

import hashlib
import struct

import torch
from torch import Tensor

from ddim.formats.datasets import random_flip
from ddim.train.config import TrainConfig

# Stream tags that keep the seeds of different kinds of draws apart.
INIT, EPOCH, STEP, DROPOUT, LABELS = 1, 2, 3, 4, 5


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed that is a hash of ``seed`` and ``keys`` (independent streams)."""
    data = struct.pack(f"<{1 + len(keys)}q", seed, *keys)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


class DataOrder:
    """Maps positions of an endless sample stream to data-set indices.

    Position ``p`` is in epoch ``p // n``; each epoch is ``randperm(n)`` seeded by
    ``(seed, epoch)``, so any batch can be found from its position alone.
    """

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("the training data set is empty")
        self.n, self.seed = n, seed
        self._perms: dict[int, Tensor] = {}

    def indices(self, start: int, count: int) -> Tensor:
        """Data-set indices of stream positions ``start .. start + count - 1``."""
        pos = torch.arange(start, start + count)
        epochs, offsets = pos // self.n, pos % self.n
        out = torch.empty(count, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self._perm(epoch)[offsets[mask]]
        return out

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(derive_seed(self.seed, EPOCH, epoch))
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]


def sample_timesteps(n: int, T: int, generator: torch.Generator, antithetic: bool) -> Tensor:
    """``n`` timesteps uniform on ``0..T-1``; ``antithetic`` pairs the first half with
    ``T - 1 - t`` in the second (the official code's variance reduction)."""
    if not antithetic:
        return torch.randint(0, T, (n,), generator=generator)
    t = torch.randint(0, T, (n // 2 + 1,), generator=generator)
    return torch.cat([t, T - 1 - t])[:n]


def step_batch(
    data: Tensor,
    order: DataOrder,
    step: int,
    config: TrainConfig,
    T: int,
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The global batch of ``step`` (from 1): ``x0``, ``t``, ``noise`` and, with ``labels``
    (a conditional run), ``y``, each label replaced by the null label ``model.num_classes``
    with probability ``training.label_dropout``; all on the CPU."""
    tc = config.training
    g = torch.Generator().manual_seed(derive_seed(tc.seed, STEP, step))
    index = order.indices((step - 1) * tc.batch_size, tc.batch_size)
    x0 = data[index]
    t = sample_timesteps(tc.batch_size, T, g, tc.antithetic)
    noise = torch.randn(x0.shape, generator=g)
    if config.data.random_flip:
        x0 = random_flip(x0, g)
    if labels is None:
        return x0, t, noise, None
    g_labels = torch.Generator().manual_seed(derive_seed(tc.seed, LABELS, step))
    dropped = torch.rand(tc.batch_size, generator=g_labels) < tc.label_dropout
    y = torch.where(dropped, config.model.num_classes, labels[index])
    return x0, t, noise, y
