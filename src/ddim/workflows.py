"""Batched end-to-end uses of a model: generate, encode, decode, reconstruct, interpolate.

These are the functions behind the ``ddim`` command, for Python users. They split work into
batches without changing results: image ``i`` of :func:`generate` comes from seed
``seed + i`` whatever ``batch_size`` is, and encoding and decoding are deterministic.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ddim import precision
from ddim.formats import speed_record
from ddim.guidance import Classifier, num_classes
from ddim.interpolate import slerp, slerp_grid
from ddim.models import speed as autospeed
from ddim.models.fast import Setting, compile_cache_dir, prepare
from ddim.noise import seeded_latents
from ddim.sampling import Callback, Model, SamplerOptions, Trajectory, model_calls
from ddim.schedule import NoiseSchedule

#: Today's sampler at its defaults: 50 uniform DDIM steps, eta = 0, the model in fp32.
DEFAULTS = SamplerOptions()
#: ``generate``'s ``speed``: the model as given, or the fastest measured setting for the job.
SPEEDS = ("eager", "auto")


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


@dataclass
class Fastest:
    """A model prepared for a job by :func:`fastest` (``picked``) or by its caller
    (:func:`as_given`): its ``setting``, ``why``, and what to measure; :meth:`learn` stores
    the finished job's figures for the next choice."""

    model: Model
    setting: Setting
    why: str
    key: str | None = None
    measured: autospeed.Measured | None = None
    calls: int = 0
    picked: bool = True

    def learn(self, seconds: float) -> None:
        """Record that the job's ``calls`` model calls took ``seconds`` in all."""
        if self.key is None or self.measured is None:
            return
        learned = autospeed.learn(
            self.measured, self.setting, getattr(self.model, "seconds", None), seconds, self.calls
        )
        if learned != self.measured:
            speed_record.save(self.key, learned)


def _job(
    model: Model,
    sched: NoiseSchedule,
    n: int,
    batch_size: int,
    device: torch.device | str,
    options: SamplerOptions,
) -> tuple[autospeed.Job, str, str, autospeed.Measured]:
    """The job of sampling ``n`` images with ``options``, the precision it runs in, its
    record key, and its record."""
    rows = min(n, batch_size)
    two_halves = num_classes(model) and options.guidance not in (None, 0.0, 1.0)
    o = options
    per_batch = model_calls(sched, o.steps, o.spacing, o.solver, o.final_step)
    job = autospeed.Job(rows=2 * rows if two_halves else rows, batch=rows,
                        calls=per_batch * -(-n // batch_size))  # fmt: skip
    chosen = precision.choose(options.precision, device)[0]
    key = autospeed.key(model, torch.device(device), chosen, job)
    measured = speed_record.load(key)
    if measured.compile_first is not None and not compile_cache_dir().is_dir():
        measured = dataclasses.replace(measured, compile_first=None, compile_again=None)
    return job, chosen, key, measured


def fastest(
    model: Model,
    sched: NoiseSchedule,
    n: int,
    shape: Sequence[int],
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    options: SamplerOptions = DEFAULTS,
) -> Fastest:
    """``model`` prepared the fastest measured way (:mod:`ddim.models.speed`) to sample
    ``n`` images of ``shape`` in batches of ``batch_size`` with ``options``. A model that is
    not a plain module with a ``config`` (already prepared, or a function) runs as given."""
    if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
        return Fastest(model, Setting(), "the model is not a plain U-Net module; run as given")
    job, chosen, key, measured = _job(model, sched, n, batch_size, device, options)
    guided = job.rows > job.batch  # whether to split guidance's 2B rows pays at any size
    if (job.calls >= autospeed.MIN_CALLS or guided) and measured.eager is None:
        fresh = autospeed.measure(model, job, torch.device(device), chosen, tuple(shape))
        found = {k: v for k, v in fresh.to_dict().items() if v is not None}
        measured = dataclasses.replace(measured, **found)
        speed_record.save(key, measured)
    setting, why = autospeed.choose(job, measured)
    return Fastest(prepare(model, setting), setting, why, key, measured, job.calls)


def as_given(
    model: Model,
    setting: Setting,
    sched: NoiseSchedule,
    n: int,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    options: SamplerOptions = DEFAULTS,
) -> Fastest:
    """``model``, already prepared in ``setting`` by the caller, wrapped so that the job's
    figures go into the same record :func:`fastest` reads (a ``--compile`` run teaches
    ``speed="auto"`` what compiling costs and saves here)."""
    job, _, key, measured = _job(model, sched, n, batch_size, device, options)
    return Fastest(model, setting, "asked for", key, measured, job.calls, picked=False)


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
    speed: str = "eager",
) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Draw ``n`` samples of ``shape`` ``(C, H, W)`` with :func:`ddim.sample`, in batches.

    Sample ``i`` takes ``x_T`` and all its step noise from one generator seeded ``seed + i``
    on ``device``, so it does not depend on ``batch_size``; with ``labels`` ``(n,)`` it is
    of class ``labels[i]`` (guided as ``options`` say, with ``classifier`` if given). With
    ``return_trajectory`` the per-batch trajectories are joined into one of the whole set.
    ``speed="auto"`` runs the model the fastest way measured for this job (:func:`fastest`;
    the same images to rounding).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if speed not in SPEEDS:
        raise ValueError(f"unknown speed {speed!r}; choose one of {', '.join(SPEEDS)}")
    _check_labels(labels, n)
    if speed == "auto":
        prepared = fastest(
            model, sched, n, shape, batch_size=batch_size, device=device, options=options
        )
        start = time.perf_counter()
        result = generate(
            prepared.model, sched, n, shape, seed=seed, batch_size=batch_size, device=device,
            options=options, labels=labels, classifier=classifier,
            return_trajectory=return_trajectory, callback=callback,
        )  # fmt: skip
        prepared.learn(time.perf_counter() - start)
        return result
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
