"""The generalized DDIM sampler (Song, Meng & Ermon 2021), its deterministic inverse, and noise.

One step from ``t`` to ``t_prev`` (eq. 12), with ``a = alpha_bar``::

    x0_pred = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)
    sigma   = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)      (eq. 16)
    x_prev  = sqrt(a_prev) * x0_pred + sqrt(1 - a_prev - sigma**2) * eps + sigma * z

``eta = 0`` is DDIM, ``eta = 1`` is DDPM's ancestral step. ``variance="ddpm-large"`` is
the paper's sigma-hat row of Table 1 (the official ``ddpm_noisy`` step): the posterior mean
of ``q(x_prev | x_t, x0_pred)`` with noise std ``sqrt(1 - a_t / a_prev)``.

Schedule scalars are Python floats on the host, so a step launches device work only and
never waits on the device. Non-finite model outputs are flagged on the device and reported
once, after the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ddim.schedule import NoiseSchedule

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
VARIANCES = ("ddim", "ddpm-large")


@dataclass(frozen=True)
class Trajectory:
    """Every state of one sampling run (the official ``--sequence`` output).

    ``timesteps`` lists the steps that ran (zero-length steps are left out), ``xs[0]`` is
    ``x_T`` and ``xs[k + 1]`` the state after the step at ``timesteps[k]``, which predicted
    ``x0_preds[k]``.
    """

    timesteps: list[int]
    xs: list[torch.Tensor]
    x0_preds: list[torch.Tensor]


def seeded_generators(
    seed: int, n: int, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per sample, sample ``i`` seeded with ``seed + i``."""
    return [torch.Generator(device=device).manual_seed(seed + i) for i in range(n)]


def per_sample_randn(
    generators: Sequence[torch.Generator],
    shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """A standard normal batch whose row ``i`` is drawn from ``generators[i]`` alone.

    Row ``i`` is therefore the same whatever the batch it is part of.
    """
    return torch.stack(
        [torch.randn(tuple(shape), generator=g, dtype=dtype, device=device) for g in generators]
    )


def _step_pairs(
    sched: NoiseSchedule, steps: int | Sequence[int], spacing: str
) -> list[tuple[int, int]]:
    """``(t, t_prev)`` for every step, largest ``t`` first; the last ``t_prev`` is ``-1``."""
    ts = sched.timesteps(steps, spacing).tolist()
    return list(zip(ts, ts[1:] + [-1], strict=True))


def _predict_eps(
    model: Model,
    x: torch.Tensor,
    t_batch: torch.Tensor,
    i: int,
    t: int,
    flags: list[tuple[int, int, torch.Tensor]],
) -> torch.Tensor:
    """Call the model at step ``i``, check its shape, and flag non-finite output on the device."""
    eps = model(x, t_batch)
    if not isinstance(eps, torch.Tensor) or eps.shape != x.shape:
        shape = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise ValueError(
            f"model returned {shape} at step {i} (t={t}); "
            f"expected a tensor of shape {tuple(x.shape)}"
        )
    eps = eps.to(x.dtype)
    flags.append((i, t, torch.isfinite(eps).all()))
    return eps


def _raise_if_nonfinite(flags: list[tuple[int, int, torch.Tensor]]) -> None:
    """Report the first step whose model output was not finite (one device sync)."""
    if not flags:
        return
    finite = torch.stack([f for _, _, f in flags]).cpu()
    if not finite.all():
        i, t, _ = flags[int((~finite).nonzero()[0, 0])]
        raise ValueError(f"model returned non-finite values at step {i} (t={t})")


def _timestep_batch(
    pairs: list[tuple[int, int]], batch: int, device: torch.device
) -> list[torch.Tensor]:
    """The ``t`` argument of every model call, made with one host-to-device copy."""
    t_all = torch.tensor([t for t, _ in pairs], dtype=torch.long, device=device)
    return [t_all[i].expand(batch) for i in range(len(pairs))]


@torch.no_grad()
def sample(
    model: Model,
    x_T: torch.Tensor,
    sched: NoiseSchedule,
    steps: int | Sequence[int] = 50,
    spacing: str = "uniform",
    eta: float = 0.0,
    variance: str = "ddim",
    clip_denoised: bool | None = None,
    seed: int | None = None,
    generators: Sequence[torch.Generator] | None = None,
    noise: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Run the generalized sampler of eq. 12 from ``x_T`` down to ``x_0``.

    Args:
        model: any ``model(x_t, t) -> eps`` with ``t`` a LongTensor ``(B,)`` in ``0..T-1``.
        x_T: the starting noise; all math runs in its dtype and on its device.
        sched: the noise schedule the model was trained with.
        steps: a number of steps ``S`` or an explicit sequence of timesteps.
        spacing: how ``S`` steps are laid out (see :meth:`NoiseSchedule.timesteps`).
        eta: the ``eta`` of eq. 16; 0 is DDIM, 1 is DDPM. Ignored by ``"ddpm-large"``.
        variance: ``"ddim"`` (eq. 16) or ``"ddpm-large"`` (Table 1's sigma-hat).
        clip_denoised: clamp ``x0_pred`` to ``[-1, 1]`` at every step. ``None`` follows the
            official code: off for ``"ddim"``, on for ``"ddpm-large"``.
        seed: sample ``i`` draws its noise from a generator seeded with ``seed + i``.
        generators: one generator per sample, used instead of ``seed`` (for example the
            ones ``x_T`` was drawn from, see :func:`seeded_generators`).
        noise: explicit ``z`` for every step, shape ``(len(timesteps), *x_T.shape)``.
        return_trajectory: also return every ``x_t`` and every ``x0_pred``.
        progress: show a tqdm bar.
        callback: called as ``callback(i, t, x, x0_pred)`` after every step.

    Returns:
        ``x_0``, or ``(x_0, Trajectory)`` with ``return_trajectory``.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if clip_denoised is None:
        clip_denoised = variance == "ddpm-large"
    pairs = _step_pairs(sched, steps, spacing)
    stochastic = variance == "ddpm-large" or eta > 0
    gens = _resolve_generators(x_T, seed, generators, noise, len(pairs), stochastic)

    x = x_T
    ts = _timestep_batch(pairs, x.shape[0], x.device)
    flags: list[tuple[int, int, torch.Tensor]] = []
    traj = Trajectory([], [x_T], []) if return_trajectory else None
    for i, (t, t_prev) in enumerate(tqdm(pairs, disable=not progress, desc="sampling")):
        if t == t_prev:
            continue
        a_t, a_prev = sched.alpha_bar_at(t), sched.alpha_bar_at(t_prev)
        eps = _predict_eps(model, x, ts[i], i, t, flags)
        x0_pred = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if clip_denoised:
            x0_pred = x0_pred.clamp(-1, 1)
        if variance == "ddim":
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            x = math.sqrt(a_prev) * x0_pred + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        else:
            beta = 1 - a_t / a_prev
            x = (math.sqrt(a_prev) * beta * x0_pred + math.sqrt(1 - beta) * (1 - a_prev) * x) / (
                1 - a_t
            )
            sigma = math.sqrt(beta) if t_prev >= 0 else 0.0
        if sigma > 0:
            x = x + sigma * _step_noise(i, x, gens, noise)
        if traj is not None:
            traj.timesteps.append(t)
            traj.xs.append(x)
            traj.x0_preds.append(x0_pred)
        if callback is not None:
            callback(i, t, x, x0_pred)
    _raise_if_nonfinite(flags)
    return (x, traj) if traj is not None else x


def _resolve_generators(
    x_T: torch.Tensor,
    seed: int | None,
    generators: Sequence[torch.Generator] | None,
    noise: torch.Tensor | None,
    n_steps: int,
    stochastic: bool,
) -> Sequence[torch.Generator] | None:
    """Check the noise source; ``None`` means draw from ``noise`` or the global RNG."""
    if noise is not None:
        expected = (n_steps, *x_T.shape)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {expected}")
        return None
    if generators is not None:
        if len(generators) != x_T.shape[0]:
            raise ValueError(f"got {len(generators)} generators for a batch of {x_T.shape[0]}")
        return generators
    if seed is not None and stochastic:
        return seeded_generators(seed, x_T.shape[0], x_T.device)
    return None


def _step_noise(
    i: int, x: torch.Tensor, gens: Sequence[torch.Generator] | None, noise: torch.Tensor | None
) -> torch.Tensor:
    if noise is not None:
        return noise[i].to(device=x.device, dtype=x.dtype)
    if gens is not None:
        return per_sample_randn(gens, x.shape[1:], dtype=x.dtype, device=x.device)
    return torch.randn_like(x)


@torch.no_grad()
def invert(
    model: Model,
    x0: torch.Tensor,
    sched: NoiseSchedule,
    steps: int | Sequence[int] = 50,
    spacing: str = "uniform",
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM encoding ``x_0 -> x_T``: the ``eta = 0`` step run upwards (eq. 13).

    It visits the same ``(t_prev, t)`` pairs as :func:`sample` in ascending order, and
    queries the model at ``(x_{t_prev}, t)``, the timestep of the sampling step it undoes::

        x_t = sqrt(a_t) * (x_prev - sqrt(1 - a_prev) * eps) / sqrt(a_prev) + sqrt(1 - a_t) * eps

    ``callback(i, t, x, x0_pred)`` is called after every step.
    """
    pairs = _step_pairs(sched, steps, spacing)[::-1]
    ts = _timestep_batch(pairs, x0.shape[0], x0.device)
    x = x0
    flags: list[tuple[int, int, torch.Tensor]] = []
    for i, (t, t_prev) in enumerate(tqdm(pairs, disable=not progress, desc="encoding")):
        if t == t_prev:
            continue
        a_t, a_prev = sched.alpha_bar_at(t), sched.alpha_bar_at(t_prev)
        eps = _predict_eps(model, x, ts[i], i, t, flags)
        x0_pred = (x - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
        x = math.sqrt(a_t) * x0_pred + math.sqrt(1 - a_t) * eps
        if callback is not None:
            callback(i, t, x, x0_pred)
    _raise_if_nonfinite(flags)
    return x
