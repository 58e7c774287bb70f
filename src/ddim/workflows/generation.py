"""Drawing images in batches: :func:`generate` from seeds, :func:`decode` from given latents,
and the latents of an interpolation (:func:`interpolation_latents`).

Image ``i`` of :func:`generate` comes from seed ``seed + i`` whatever ``batch_size`` is, and
decoding with ``eta = 0`` is deterministic. The model runs as given (prepare it first with
:mod:`ddim.speed` to run it the fastest measured way).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddim.guidance import Classifier
from ddim.interpolate import slerp, slerp_grid
from ddim.latent import CoupledLatent
from ddim.noise import seeded_latents
from ddim.sampler_options import DEFAULTS
from ddim.sampling import Callback, Model, SamplerOptions, Trajectory
from ddim.schedule import NoiseSchedule
from ddim.workflows.batches import batches, check_labels, in_batches


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
    ``model`` runs as given: :func:`ddim.speed.fastest` prepares it the fastest way measured
    for this job (the same images to rounding).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    check_labels(labels, n)
    outputs, trajectories = [], []
    for start, stop in batches(n, batch_size):
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
    return in_batches(
        lambda x_T, y: options.sample(model, x_T, sched, y=y, callback=callback),
        latents, labels, batch_size,
    )  # fmt: skip


def interpolation_latents(
    corners: torch.Tensor | CoupledLatent, frames: int
) -> torch.Tensor | CoupledLatent:
    """Latents to decode for an interpolation, flattened into one batch.

    Two corners give ``frames`` slerps from the first to the second; four (top-left,
    top-right, bottom-left, bottom-right) give the paper's ``frames x frames`` grid, row by
    row (:func:`ddim.slerp_grid`). An exact solver's latents are interpolated half by half
    with the same weights (what that means: :mod:`ddim.latent`).
    """
    if isinstance(corners, CoupledLatent):
        first = interpolation_latents(corners.first, frames)
        return CoupledLatent(corners.solver, first, interpolation_latents(corners.second, frames))
    if frames < 2:
        raise ValueError(f"an interpolation needs at least 2 frames, got {frames}")
    if corners.shape[0] == 2:
        alphas = torch.linspace(0, 1, frames, dtype=corners.dtype, device=corners.device)
        return slerp(corners[0], corners[1], alphas)
    if corners.shape[0] == 4:
        return slerp_grid(corners, frames, frames).flatten(0, 1)
    raise ValueError(f"an interpolation needs 2 or 4 latents, got {corners.shape[0]}")
