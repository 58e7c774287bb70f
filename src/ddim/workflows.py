"""Batched end-to-end uses of a model: generate, encode, decode, reconstruct, interpolate.

These are the functions behind the ``ddim`` command, for Python users. They split work into
batches without changing results: image ``i`` of :func:`generate` comes from seed
``seed + i`` whatever ``batch_size`` is, and encoding and decoding are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddim.guidance import Classifier
from ddim.interpolate import slerp, slerp_grid
from ddim.noise import seeded_latents
from ddim.sampling import Callback, Model, SamplerOptions, Trajectory
from ddim.schedule import NoiseSchedule

#: Today's sampler at its defaults: 50 uniform DDIM steps, eta = 0, the model in fp32.
DEFAULTS = SamplerOptions()


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _in_batches(
    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor | None,
    batch_size: int,
) -> torch.Tensor:
    """``fn(rows, their labels)`` over ``x`` ``batch_size`` rows at a time, concatenated."""
    _check_labels(labels, x.shape[0])
    return torch.cat([
        fn(x[a:b], None if labels is None else labels[a:b])
        for a, b in _batches(x.shape[0], batch_size)
    ])  # fmt: skip


def _check_labels(labels: torch.Tensor | None, n: int) -> None:
    if labels is not None and tuple(labels.shape) != (n,):
        raise ValueError(f"labels must have shape ({n},), one per image, got {tuple(labels.shape)}")


def _merge(parts: list[Trajectory]) -> Trajectory:
    """Concatenate per-batch trajectories of the same timesteps along the batch axis."""
    return Trajectory(
        timesteps=list(parts[0].timesteps),
        xs=[torch.cat(states) for states in zip(*(p.xs for p in parts), strict=True)],
        x0_preds=[torch.cat(preds) for preds in zip(*(p.x0_preds for p in parts), strict=True)],
    )


def generate(
    model: Model,
    sched: NoiseSchedule,
    n: int,
    shape: Sequence[int],
    *,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    options: SamplerOptions = DEFAULTS,
    labels: torch.Tensor | None = None,
    classifier: Classifier | None = None,
    return_trajectory: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Draw ``n`` samples of ``shape`` ``(C, H, W)`` with :func:`ddim.sample`, in batches.

    Sample ``i`` takes ``x_T`` and all its step noise from one generator seeded ``seed + i``
    on ``device``, so it does not depend on ``batch_size``; with ``labels`` ``(n,)`` it is
    of class ``labels[i]`` (guided as ``options`` say, with ``classifier`` if given). With
    ``return_trajectory`` the per-batch trajectories are joined into one of the whole set.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_labels(labels, n)
    outputs, trajectories = [], []
    for start, stop in _batches(n, batch_size):
        x_T, gens = seeded_latents(range(seed + start, seed + stop), shape, device=device)
        out = options.sample(
            model,
            x_T,
            sched,
            y=None if labels is None else labels[start:stop],
            classifier=classifier,
            generators=gens,
            return_trajectory=return_trajectory,
            callback=callback,
        )
        if return_trajectory:
            out, trajectory = out
            trajectories.append(trajectory)
        outputs.append(out)
    x0 = torch.cat(outputs)
    return (x0, _merge(trajectories)) if return_trajectory else x0


def decode(
    model: Model,
    sched: NoiseSchedule,
    latents: torch.Tensor,
    *,
    options: SamplerOptions = DEFAULTS,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Decoding of latents ``x_T`` with ``options`` (under classes ``labels``, one per
    latent, if given), in batches; deterministic (DDIM) with the default ``eta = 0``."""
    return _in_batches(
        lambda x_T, y: options.sample(model, x_T, sched, y=y, callback=callback),
        latents, labels, batch_size,
    )  # fmt: skip


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
    return _in_batches(
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


def interpolation_latents(corners: torch.Tensor, frames: int) -> torch.Tensor:
    """Latents to decode for an interpolation, flattened into one batch.

    Two corners give ``frames`` slerps from the first to the second; four (top-left,
    top-right, bottom-left, bottom-right) give the paper's ``frames x frames`` grid, row by
    row (:func:`ddim.slerp_grid`).
    """
    if frames < 2:
        raise ValueError(f"an interpolation needs at least 2 frames, got {frames}")
    if corners.shape[0] == 2:
        alphas = torch.linspace(0, 1, frames, dtype=corners.dtype, device=corners.device)
        return slerp(corners[0], corners[1], alphas)
    if corners.shape[0] == 4:
        return slerp_grid(corners, frames, frames).flatten(0, 1)
    raise ValueError(f"an interpolation needs 2 or 4 latents, got {corners.shape[0]}")
