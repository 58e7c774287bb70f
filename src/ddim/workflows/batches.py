"""A job split into batches without changing its results: the ``[start, stop)`` ranges of
a batch size, and a function applied to a batch of rows (and their labels) at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ddim.latent import CoupledLatent, concatenate


def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` ranges that cut ``n`` rows into batches of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def in_batches(
    fn: Callable[[Any, torch.Tensor | None], Any],
    x: torch.Tensor | CoupledLatent,
    labels: torch.Tensor | None,
    batch_size: int,
) -> Any:
    """``fn(rows, their labels)`` over ``x`` (images, or latents: an exact solver's too)
    ``batch_size`` rows at a time, concatenated."""
    check_labels(labels, x.shape[0])
    return concatenate([
        fn(x[a:b], None if labels is None else labels[a:b])
        for a, b in batches(x.shape[0], batch_size)
    ])  # fmt: skip


def check_labels(labels: torch.Tensor | None, n: int) -> None:
    """A ValueError unless ``labels`` is ``None`` or holds one label per image: ``(n,)``."""
    if labels is not None and tuple(labels.shape) != (n,):
        raise ValueError(f"labels must have shape ({n},), one per image, got {tuple(labels.shape)}")
