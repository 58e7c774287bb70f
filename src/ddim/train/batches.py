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
from dataclasses import dataclass

import torch
from torch import Tensor

from ddim.formats.datasets import apply_flip, flip_mask
from ddim.formats.image_sets import ImageSet, to_model_range
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


@dataclass(frozen=True)
class Draws:
    """The random draws of one global batch: timesteps, noise, which images to mirror
    (None without ``data.random_flip``) and which labels to drop (None, unconditional)."""

    t: Tensor
    noise: Tensor
    flip: Tensor | None
    dropped: Tensor | None


def step_indices(order: DataOrder, step: int, batch_size: int) -> Tensor:
    """The data-set indices of the global batch of ``step`` (from 1)."""
    return order.indices((step - 1) * batch_size, batch_size)


def step_draws(step: int, config: TrainConfig, shape: tuple[int, ...], T: int) -> Draws:
    """The draws of ``step``'s global batch of images of ``shape`` ``(C, H, W)``, from one
    generator seeded by ``(seed, step)`` (``t``, then the noise, then the flips) and, for a
    conditional run, another seeded by ``(seed, LABELS, step)``; all on the CPU."""
    tc = config.training
    g = torch.Generator().manual_seed(derive_seed(tc.seed, STEP, step))
    t = sample_timesteps(tc.batch_size, T, g, tc.antithetic)
    noise = torch.randn((tc.batch_size, *shape), generator=g)
    flip = flip_mask(tc.batch_size, g) if config.data.random_flip else None
    dropped = None
    if config.model.num_classes:
        g_labels = torch.Generator().manual_seed(derive_seed(tc.seed, LABELS, step))
        dropped = torch.rand(tc.batch_size, generator=g_labels) < tc.label_dropout
    return Draws(t, noise, flip, dropped)


def assemble(
    images: Tensor, labels: Tensor | None, draws: Draws, part: slice, null_label: int
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``x0``, ``t``, ``noise`` and ``y`` of the rows ``part`` of a global batch, given
    those rows' images (uint8 or float) and labels: the images in ``[-1, 1]``, mirrored
    where drawn, and each label replaced by ``null_label`` where dropped."""
    x0 = to_model_range(images)
    if draws.flip is not None:
        x0 = apply_flip(x0, draws.flip[part])
    y = None
    if labels is not None and draws.dropped is not None:
        y = torch.where(draws.dropped[part], null_label, labels)
    return x0, draws.t[part], draws.noise[part], y


def step_batch(
    data: ImageSet, order: DataOrder, step: int, config: TrainConfig, T: int
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The global batch of ``step`` (from 1), read in this process: ``x0``, ``t``,
    ``noise`` and, for a conditional run, ``y`` with label dropout; all on the CPU."""
    index = step_indices(order, step, config.training.batch_size)
    draws = step_draws(step, config, tuple(data.shape), T)
    labelled = draws.dropped is not None and data.labels is not None
    labels = data.labels[index] if labelled else None
    whole = slice(None)
    return assemble(data.batch(index), labels, draws, whole, config.model.num_classes)
