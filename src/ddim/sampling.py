"""The generalized DDIM sampler (Song, Meng & Ermon 2021) and its deterministic inverse.

One step from ``t`` to ``t_prev``, with ``a = alpha_bar`` (equation numbers of the paper)::

    x0_pred = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)                             (eq. 9)
    sigma   = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)       (eq. 16)
    x_prev  = sqrt(a_prev) * x0_pred + sqrt(1 - a_prev - sigma**2) * eps + sigma * z  (eq. 12)

``eta = 0`` is DDIM, ``eta = 1`` is DDPM's ancestral step. ``variance=SIGMA_HAT`` (the
string ``"ddpm-large"``) is the paper's sigma-hat row of Table 1, the official code's
``ddpm_noisy`` step: the posterior mean of ``q(x_prev | x_t, x0_pred)`` (Ho et al. eq. 7)
with noise std ``sqrt(1 - a_t / a_prev)``.

Schedule scalars are Python floats on the host, so a step launches device work only and
never waits on the device. Non-finite model outputs are flagged on the device and reported
once, after the loop (:class:`CheckedModel`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ddim.names import SIGMA_HAT, VARIANCES
from ddim.noise import StepNoise, step_noise
from ddim.precision import DTYPES, choose
from ddim.schedule import NoiseSchedule

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


# ---------------------------------------------------------------- the paper's equations


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, a_t: float) -> torch.Tensor:
    """Eq. 9 solved for ``x_0``: ``(x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``."""
    return (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)


def ddim_sigma(a_t: float, a_prev: float, eta: float) -> float:
    """Eq. 16: ``eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)``."""
    return eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))


def ddim_step(
    x0_pred: torch.Tensor, eps: torch.Tensor, a_prev: float, sigma: float
) -> torch.Tensor:
    """Eq. 12 without its noise term: ``sqrt(a_prev) x0_pred + sqrt(1 - a_prev - sigma^2) eps``.

    For ``eta <= 1``, ``1 - a_prev - sigma**2 >= 0`` holds exactly and is clamped at 0 only
    against rounding; a larger ``eta`` that breaks it is refused by :func:`sample`.
    """
    return math.sqrt(a_prev) * x0_pred + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps


def posterior_mean(
    x_t: torch.Tensor, x0_pred: torch.Tensor, a_t: float, a_prev: float
) -> torch.Tensor:
    """The mean of ``q(x_prev | x_t, x_0 = x0_pred)`` (Ho et al. 2020, eq. 7) for a step of
    ``beta = 1 - a_t / a_prev``: the mean of the sigma-hat step."""
    beta = 1 - a_t / a_prev
    return (math.sqrt(a_prev) * beta * x0_pred + math.sqrt(1 - beta) * (1 - a_prev) * x_t) / (
        1 - a_t
    )


# ---------------------------------------------------------------- running a model


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


class CheckedModel:
    """``model`` with its output checked: the shape at once, finiteness after the loop.

    Each call runs under the autocast of ``precision`` (:mod:`ddim.precision`) and records,
    on the device, whether the output was finite; :meth:`raise_if_nonfinite` reads all
    records with one device sync and names the first step that was not.
    """

    def __init__(
        self,
        model: Model,
        timesteps: Sequence[int],
        batch: int,
        device: torch.device,
        precision: str = "fp32",
    ):
        self.model = model
        self.precision = choose(precision, device)[0]
        self._autocast = DTYPES.get(self.precision), torch.device(device).type
        t_all = torch.tensor(list(timesteps), dtype=torch.long, device=device)
        self._t = [t_all[i].expand(batch) for i in range(len(timesteps))]
        self._flags: list[tuple[int, int, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, i: int, t: int) -> torch.Tensor:
        """``eps`` at step ``i`` (timestep ``t``), in the dtype of ``x``."""
        dtype, device_type = self._autocast
        if dtype is None:
            eps = self.model(x, self._t[i])
        else:
            with torch.autocast(device_type, dtype=dtype):
                eps = self.model(x, self._t[i])
        if not isinstance(eps, torch.Tensor) or eps.shape != x.shape:
            shape = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
            raise ValueError(
                f"model returned {shape} at step {i} (t={t}); "
                f"expected a tensor of shape {tuple(x.shape)}"
            )
        eps = eps.to(x.dtype)
        self._flags.append((i, t, torch.isfinite(eps).all()))
        return eps

    def raise_if_nonfinite(self) -> None:
        """A ValueError naming the first step whose model output was not finite."""
        if not self._flags:
            return
        finite = torch.stack([f for _, _, f in self._flags]).cpu()
        if not finite.all():
            i, t, _ = self._flags[int((~finite).nonzero()[0, 0])]
            raise ValueError(f"model returned non-finite values at step {i} (t={t})")


def step_pairs(
    sched: NoiseSchedule, steps: int | Sequence[int], spacing: str
) -> list[tuple[int, int]]:
    """``(t, t_prev)`` for every step, largest ``t`` first; the last ``t_prev`` is ``-1``."""
    ts = sched.timesteps(steps, spacing).tolist()
    return list(zip(ts, ts[1:] + [-1], strict=True))


def _check_eta(sched: NoiseSchedule, pairs: list[tuple[int, int]], eta: float) -> None:
    """Refuse an ``eta`` whose eq. 16 sigma exceeds ``sqrt(1 - a_prev)`` at some step, where
    eq. 12's coefficient of ``eps`` would be the square root of a negative number."""
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if eta <= 1:
        return
    for i, (t, t_prev) in enumerate(pairs):
        a_t, a_prev = sched.alpha_bar_at(t), sched.alpha_bar_at(t_prev)
        if t != t_prev and 1 - a_prev - ddim_sigma(a_t, a_prev, eta) ** 2 < 0:
            raise ValueError(
                f"eta = {eta} makes 1 - alpha_bar_prev - sigma^2 negative at step {i} "
                f"(t={t} -> {t_prev}), so eq. 12 is undefined there; use eta <= 1"
            )


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
    precision: str = "fp32",
) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Run the generalized sampler of eq. 12 from ``x_T`` down to ``x_0``.

    Args:
        model: any ``model(x_t, t) -> eps`` with ``t`` a LongTensor ``(B,)`` in ``0..T-1``.
        x_T: the starting noise; all math runs in its dtype and on its device.
        sched: the noise schedule the model was trained with.
        steps: a number of steps ``S`` or an explicit sequence of timesteps.
        spacing: how ``S`` steps are laid out (see :meth:`NoiseSchedule.timesteps`).
        eta: the ``eta`` of eq. 16 in ``[0, 1]``; 0 is DDIM, 1 is DDPM. A larger ``eta`` is
            accepted where eq. 12 stays defined at every step, else a ValueError names the
            step. Ignored by sigma-hat.
        variance: ``"ddim"`` (eq. 16) or ``"ddpm-large"`` (Table 1's sigma-hat).
        clip_denoised: clamp ``x0_pred`` to ``[-1, 1]`` at every step. ``None`` follows the
            official code: off for ``"ddim"``, on for sigma-hat.
        seed, generators, noise: the step noise ``z``, at most one of them: ``seed`` gives
            sample ``i`` a generator seeded ``seed + i``; ``generators`` one per sample (for
            example those ``x_T`` was drawn from); ``noise`` every ``z`` explicitly, shape
            ``(len(timesteps), *x_T.shape)``. With none, ``z`` comes from the global RNG.
        return_trajectory: also return every ``x_t`` and every ``x0_pred``.
        progress: show a tqdm bar.
        callback: called as ``callback(i, t, x, x0_pred)`` after every step.
        precision: the model call's precision, ``fp32`` (no autocast), ``bf16``, ``fp16``
            or ``auto`` (:func:`ddim.precision.choose`); the sampler's arithmetic stays in
            the dtype of ``x_T``.

    Returns:
        ``x_0``, or ``(x_0, Trajectory)`` with ``return_trajectory``.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    pairs = step_pairs(sched, steps, spacing)
    if variance == "ddim":
        _check_eta(sched, pairs, eta)
    if clip_denoised is None:
        clip_denoised = variance == SIGMA_HAT
    stochastic = variance == SIGMA_HAT or eta > 0
    z: StepNoise = step_noise(x_T, len(pairs), seed, generators, noise, stochastic)
    eps_model = CheckedModel(model, [t for t, _ in pairs], x_T.shape[0], x_T.device, precision)

    x = x_T
    traj = Trajectory([], [x_T], []) if return_trajectory else None
    for i, (t, t_prev) in enumerate(tqdm(pairs, disable=not progress, desc="sampling")):
        if t == t_prev:
            continue
        a_t, a_prev = sched.alpha_bar_at(t), sched.alpha_bar_at(t_prev)
        eps = eps_model(x, i, t)
        x0_pred = predict_x0(x, eps, a_t)
        if clip_denoised:
            x0_pred = x0_pred.clamp(-1, 1)
        if variance == "ddim":
            sigma = ddim_sigma(a_t, a_prev, eta)
            x = ddim_step(x0_pred, eps, a_prev, sigma)
        else:
            x = posterior_mean(x, x0_pred, a_t, a_prev)
            sigma = math.sqrt(1 - a_t / a_prev) if t_prev >= 0 else 0.0
        if sigma > 0:
            x = x + sigma * z(i, x)
        if traj is not None:
            traj.timesteps.append(t)
            traj.xs.append(x)
            traj.x0_preds.append(x0_pred)
        if callback is not None:
            callback(i, t, x, x0_pred)
    eps_model.raise_if_nonfinite()
    return (x, traj) if traj is not None else x


@torch.no_grad()
def invert(
    model: Model,
    x0: torch.Tensor,
    sched: NoiseSchedule,
    steps: int | Sequence[int] = 50,
    spacing: str = "uniform",
    progress: bool = False,
    callback: Callback | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Deterministic DDIM encoding ``x_0 -> x_T``: the ``eta = 0`` step run upwards (eq. 13).

    It visits the same ``(t_prev, t)`` pairs as :func:`sample` in ascending order and
    queries the model at ``(x_{t_prev}, t)``, the timestep of the sampling step it undoes;
    the step is eq. 9 at ``a_prev`` followed by eq. 12 (``sigma = 0``) towards ``a_t``.
    ``callback(i, t, x, x0_pred)`` is called after every step; ``precision`` is that of
    :func:`sample`.
    """
    pairs = step_pairs(sched, steps, spacing)[::-1]
    eps_model = CheckedModel(model, [t for t, _ in pairs], x0.shape[0], x0.device, precision)
    x = x0
    for i, (t, t_prev) in enumerate(tqdm(pairs, disable=not progress, desc="encoding")):
        if t == t_prev:
            continue
        a_t, a_prev = sched.alpha_bar_at(t), sched.alpha_bar_at(t_prev)
        eps = eps_model(x, i, t)
        x0_pred = predict_x0(x, eps, a_prev)
        x = ddim_step(x0_pred, eps, a_t, 0.0)
        if callback is not None:
            callback(i, t, x, x0_pred)
    eps_model.raise_if_nonfinite()
    return x
