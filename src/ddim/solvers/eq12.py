"""The generalized DDIM step (Song, Meng & Ermon 2021) as the ``ddim`` solver.

One step from ``t`` to ``t_prev``, with ``a = alpha_bar`` (equation numbers of the paper)::

    x0_pred = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)                             (eq. 9)
    sigma   = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)       (eq. 16)
    x_prev  = sqrt(a_prev) * x0_pred + sqrt(1 - a_prev - sigma**2) * eps + sigma * z  (eq. 12)

``eta = 0`` is DDIM, ``eta = 1`` is DDPM's ancestral step. ``variance=SIGMA_HAT`` (the
string ``"ddpm-large"``) is the paper's sigma-hat row of Table 1, the official code's
``ddpm_noisy`` step: the posterior mean of ``q(x_prev | x_t, x0_pred)`` (Ho et al. eq. 7)
with noise std ``sqrt(1 - a_t / a_prev)``. Neither adds noise on the step to
``alpha_bar = 1``, which returns ``x0_pred``.
"""

from __future__ import annotations

import math

import torch

from ddim.names import SIGMA_HAT, VARIANCES
from ddim.plan import Noise, Predict, Report, SolverFacts, StepPlan, data_prediction, to_data


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, a_t: float) -> torch.Tensor:
    """Eq. 9 solved for ``x_0`` at ``a_t = alpha_bar_t`` (:func:`ddim.plan.data_prediction`)."""
    return data_prediction(x_t, eps, math.sqrt(a_t), math.sqrt(1 - a_t))


def ddim_sigma(a_t: float, a_prev: float, eta: float) -> float:
    """Eq. 16: ``eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)``."""
    return eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))


def ddim_step(
    x0_pred: torch.Tensor, eps: torch.Tensor, a_prev: float, sigma: float
) -> torch.Tensor:
    """Eq. 12 without its noise term: ``sqrt(a_prev) x0_pred + sqrt(1 - a_prev - sigma^2) eps``.

    For ``eta <= 1``, ``1 - a_prev - sigma**2 >= 0`` holds exactly and is clamped at 0 only
    against rounding; a larger ``eta`` that breaks it is refused by :func:`check_eta`.
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


def check_eta(plan: StepPlan, eta: float, variance: str) -> None:
    """Refuse an unknown ``variance``, a negative ``eta``, or one whose eq. 16 sigma exceeds
    ``sqrt(1 - a_prev)`` at some step, where eq. 12's coefficient of ``eps`` would be the
    square root of a negative number."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if eta <= 1 or variance == SIGMA_HAT:
        return
    for i in range(plan.steps):
        a_t, a_prev = plan.a[i], plan.a[i + 1]
        if 1 - a_prev - ddim_sigma(a_t, a_prev, eta) ** 2 < 0:
            raise ValueError(
                f"eta = {eta} makes 1 - alpha_bar_prev - sigma^2 negative at step {i} "
                f"(t={plan.ts[i]} -> {plan.ts[i + 1]}), so eq. 12 is undefined there; "
                f"use eta <= 1"
            )


def ddim_solver(
    predict: Predict,
    x: torch.Tensor,
    plan: StepPlan,
    noise: Noise,
    report: Report,
    *,
    eta: float = 0.0,
    variance: str = "ddim",
) -> torch.Tensor:
    """Eq. 12 at every step of ``plan`` (the module docstring), or the sigma-hat step with
    ``variance="ddpm-large"``; a ``"trapezoid"`` final step is taken by
    :func:`ddim.plan.to_data`. ``eta`` and ``variance`` are checked by :func:`check_eta`."""
    for i in range(plan.steps):
        pred = predict(i, x)
        a_t, a_prev = plan.a[i], plan.a[i + 1]
        if plan.ends_at_data(i) and plan.final_step == "trapezoid":
            x = to_data(plan, i, x, pred.x0)
        elif variance == SIGMA_HAT:
            x = posterior_mean(x, pred.x0, a_t, a_prev)
            if not plan.ends_at_data(i):
                x = x + math.sqrt(1 - a_t / a_prev) * noise(i, x)
        else:
            sigma = ddim_sigma(a_t, a_prev, eta)  # 0 on the step to alpha_bar = 1
            x = ddim_step(pred.x0, pred.eps, a_prev, sigma)
            if sigma > 0:
                x = x + sigma * noise(i, x)
        x = report(i, x, pred.x0)
    return x


def _ddim_draws_noise(eta: float, variance: str) -> bool:
    """Eq. 12 draws ``z`` for ``eta > 0`` and always for sigma-hat."""
    return eta > 0 or variance == SIGMA_HAT


DDIM = SolverFacts(ddim_solver, min_steps=1, draws_noise=_ddim_draws_noise)
