"""The generalized DDIM sampler (Song, Meng & Ermon 2021) and its deterministic inverse.

One step from ``t`` to ``t_prev``, with ``a = alpha_bar`` (equation numbers of the paper)::

    x0_pred = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)                             (eq. 9)
    sigma   = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)       (eq. 16)
    x_prev  = sqrt(a_prev) * x0_pred + sqrt(1 - a_prev - sigma**2) * eps + sigma * z  (eq. 12)

``eta = 0`` is DDIM, ``eta = 1`` is DDPM's ancestral step. ``variance=SIGMA_HAT`` (the
string ``"ddpm-large"``) is the paper's sigma-hat row of Table 1, the official code's
``ddpm_noisy`` step: the posterior mean of ``q(x_prev | x_t, x0_pred)`` (Ho et al. eq. 7)
with noise std ``sqrt(1 - a_t / a_prev)``.

``solver=`` picks another solver of the same probability-flow ODE (:mod:`ddim.solvers`).

Schedule scalars are Python floats on the host, so a step launches device work only and
never waits on the device. Non-finite model outputs are flagged on the device and reported
once, after the loop (:class:`CheckedModel`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ddim.checked_model import Callback, CheckedModel, Model, Trajectory
from ddim.names import DEFAULT_FINAL_STEP, FINAL_STEPS, SIGMA_HAT, SOLVER_ORDERS, SOLVERS, VARIANCES
from ddim.noise import StepNoise, step_noise
from ddim.schedule import NoiseSchedule
from ddim.solvers import SOLVER_FUNCTIONS, Grid, Prediction
from ddim.solvers import model_calls as _solver_calls

__all__ = [
    "Callback", "CheckedModel", "Model", "Trajectory", "invert", "model_calls", "sample",
    "step_pairs",
]  # fmt: skip


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
    solver: str = "ddim",
    final_step: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Run the generalized sampler of eq. 12 (or another ``solver``) from ``x_T`` to ``x_0``.

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
        solver: ``"ddim"`` (this module's eq. 12, any ``eta``, sigma-hat) or one of the
            probability-flow solvers of :mod:`ddim.solvers`: ``dpmpp-2m``, ``dpmpp-3m``,
            ``unipc``, ``plms``, ``heun`` and the stochastic ``dpmpp-2m-sde``. These take
            ``eta = 0`` and ``variance = "ddim"`` only, and need at least as many steps
            as their order; :func:`model_calls` says what a run costs.
        final_step: how a solver run ends
            (:func:`ddim.solvers.to_data`): ``"denoise"`` steps from the smallest timestep
            to ``alpha_bar = 1`` by returning the data prediction there (DDIM's last step);
            ``"trapezoid"`` takes that step by the trapezoidal rule in ``sigma / alpha``;
            ``"none"`` returns the state at the smallest timestep as it is, one model call
            cheaper. ``None``: ``"denoise"`` for ``ddim`` (which then runs eq. 12 above;
            with another final step it runs as the first-order solver, ``eta = 0``), else
            :data:`~ddim.names.DEFAULT_FINAL_STEP` (``"trapezoid"``, chosen on the exact
            Gaussian oracle and FD-MNIST; see docs/RESULTS.md).

    Returns:
        ``x_0``, or ``(x_0, Trajectory)`` with ``return_trajectory``.
    """
    if solver != "ddim" or final_step not in (None, "denoise"):
        final_step = resolved_final_step(solver, final_step)
        _check_solver(solver, eta, variance, final_step)
        grid = solver_grid(sched, steps, spacing, solver, final_step)
        z = step_noise(x_T, grid.steps, seed, generators, noise, solver == "dpmpp-2m-sde")
        return _solve(
            model, x_T, grid, solver, bool(clip_denoised), z, return_trajectory, progress,
            callback, precision,
        )  # fmt: skip
    if final_step not in (None, "denoise"):
        raise ValueError(
            f"solver 'ddim' always ends with the denoising step; got final_step={final_step!r}"
        )
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


def resolved_final_step(solver: str, final_step: str | None) -> str:
    """``final_step``, or its default: ``"denoise"`` for ``ddim``, else
    :data:`~ddim.names.DEFAULT_FINAL_STEP`."""
    if final_step is not None:
        return final_step
    return "denoise" if solver == "ddim" else DEFAULT_FINAL_STEP


def _check_solver(solver: str, eta: float, variance: str, final_step: str) -> None:
    """A ValueError for a solver or option that does not exist or does not combine."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if eta != 0 and solver == "ddim":
        raise ValueError(f"eta needs final_step 'denoise' (eq. 12), not {final_step!r}")
    if eta != 0:
        hint = (
            "; dpmpp-2m-sde is the stochastic multistep solver" if solver != "dpmpp-2m-sde" else ""
        )
        raise ValueError(f"eta applies to solver 'ddim' only, not {solver!r}{hint}")
    if variance != "ddim":
        raise ValueError(f"variance {variance!r} applies to solver 'ddim' only, not {solver!r}")
    if final_step not in FINAL_STEPS:
        raise ValueError(
            f"unknown final_step {final_step!r}; choose one of {', '.join(FINAL_STEPS)}"
        )


def solver_grid(
    sched: NoiseSchedule, steps: int | Sequence[int], spacing: str, solver: str, final_step: str
) -> Grid:
    """The :class:`~ddim.solvers.Grid` of a solver run; at least ``order`` distinct steps."""
    grid = Grid.build(sched, sched.timesteps(steps, spacing).tolist(), final_step)
    if grid.steps < SOLVER_ORDERS[solver]:
        raise ValueError(
            f"solver {solver!r} needs at least {SOLVER_ORDERS[solver]} steps; this run has "
            f"{grid.steps} (steps={steps if isinstance(steps, int) else len(steps)}, "
            f"final_step={final_step!r})"
        )
    return grid


def _solve(
    model: Model,
    x_T: torch.Tensor,
    grid: Grid,
    solver: str,
    clip_denoised: bool,
    z: StepNoise,
    return_trajectory: bool,
    progress: bool,
    callback: Callback | None,
    precision: str,
) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Run ``solver`` over ``grid``, with the checks and reports of :func:`sample`."""
    points = [t for t in grid.ts if t >= 0]
    eps_model = CheckedModel(model, points, x_T.shape[0], x_T.device, precision)
    traj = Trajectory([], [x_T], []) if return_trajectory else None
    bar = tqdm(total=grid.steps, disable=not progress, desc=f"sampling ({solver})")

    def denoise(i: int, x: torch.Tensor) -> Prediction:
        eps = eps_model(x, i, grid.ts[i])
        x0 = (x - grid.sigma[i] * eps) / grid.alpha[i]
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
            eps = (x - grid.alpha[i] * x0) / grid.sigma[i]
        return Prediction(eps, x0)

    def report(i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        bar.update()
        if traj is not None:
            traj.timesteps.append(grid.ts[i])
            traj.xs.append(x)
            traj.x0_preds.append(x0)
        if callback is not None:
            callback(i, grid.ts[i], x, x0)

    with bar:
        x = SOLVER_FUNCTIONS[solver](denoise, x_T, grid, z, report)
    eps_model.raise_if_nonfinite()
    return (x, traj) if traj is not None else x


def model_calls(
    sched: NoiseSchedule,
    steps: int | Sequence[int] = 50,
    spacing: str = "uniform",
    solver: str = "ddim",
    final_step: str | None = None,
) -> int:
    """The number of model evaluations :func:`sample` makes with these options (per batch):
    one per step that is not zero-length, plus Heun's and PLMS's extra calls."""
    if solver == "ddim" and final_step in (None, "denoise"):
        return sum(t != t_prev for t, t_prev in step_pairs(sched, steps, spacing))
    final_step = resolved_final_step(solver, final_step)
    _check_solver(solver, 0.0, "ddim", final_step)
    return _solver_calls(solver, solver_grid(sched, steps, spacing, solver, final_step))


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
