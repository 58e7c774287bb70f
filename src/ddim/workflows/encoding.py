"""Encoding images in batches: deterministic DDIM encoding ``x_0 -> x_T`` (:func:`encode`)
and the paper's reconstruction, encoding then decoding (:func:`reconstruct`, Section 5.4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddim.sampling import Callback, Model, SamplerOptions
from ddim.schedule import NoiseSchedule
from ddim.workflows.batches import in_batches
from ddim.workflows.generation import DEFAULTS, decode


def encode(
    model: Model,
    sched: NoiseSchedule,
    x0: torch.Tensor,
    *,
    options: SamplerOptions = DEFAULTS,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM encoding ``x_0 -> x_T`` (:func:`ddim.invert`; under classes
    ``labels``, one per image, if given), in batches."""
    return in_batches(
        lambda x, y: options.invert(model, x, sched, y=y, callback=callback),
        x0, labels, batch_size,
    )  # fmt: skip


def per_dim_mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error per dimension on ``[0, 1]``-scaled pixels (the scale of
    the paper's Section 5.4), for two batches in ``[-1, 1]``: ``mean(((x - y) / 2) ** 2)``."""
    if x.shape != y.shape:
        raise ValueError(f"per_dim_mse needs equal shapes, got {tuple(x.shape)}, {tuple(y.shape)}")
    return ((x.double() - y.double()) / 2).pow(2).flatten(1).mean(dim=1)


@dataclass(frozen=True)
class Reconstruction:
    """The result of :func:`reconstruct`: the latents, the decoded images (unclipped) and
    the per-image MSE between input and reconstruction on the ``[0, 1]`` pixel scale."""

    latents: torch.Tensor
    images: torch.Tensor
    mse: torch.Tensor


def reconstruct(
    model: Model,
    sched: NoiseSchedule,
    x0: torch.Tensor,
    *,
    options: SamplerOptions = DEFAULTS,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
    callback: Callback | None = None,
) -> Reconstruction:
    """Encode then decode with the same timesteps (paper Section 5.4), under classes
    ``labels`` if given. Encoding is DDIM's (eq. 13), so decoding must be its inverse: the
    ``ddim`` solver with ``eta = 0``, the ``ddim`` variance and the denoising final step."""
    options.check_inverts_encoding("reconstruction")
    latents = encode(
        model, sched, x0, options=options, labels=labels, batch_size=batch_size,
        callback=callback,
    )  # fmt: skip
    images = decode(
        model, sched, latents, options=options, labels=labels, batch_size=batch_size,
        callback=callback,
    )  # fmt: skip
    return Reconstruction(latents, images, per_dim_mse(x0.to(images.device), images))
