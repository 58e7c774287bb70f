"""DPM-Solver++ (Lu et al. 2022b): multistep data prediction of second and third order, and
the stochastic second-order form; eqs. (1)-(3) of :mod:`ddim.solvers`."""

from __future__ import annotations

import math

import torch

from ddim.plan import Noise, Predict, Report, SolverFacts, StepPlan, first_order, never, to_data


def dpmpp_2m(
    predict: Predict, x: torch.Tensor, plan: StepPlan, noise: Noise, report: Report
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): ``D`` extrapolated linearly in ``lambda``
    from the last two calls."""
    return _multistep(predict, x, plan, report, order=2)


def dpmpp_3m(
    predict: Predict, x: torch.Tensor, plan: StepPlan, noise: Noise, report: Report
) -> torch.Tensor:
    """DPM-Solver++(3M): ``D`` extrapolated quadratically in ``lambda`` from the last three
    calls."""
    return _multistep(predict, x, plan, report, order=3)


def _multistep(
    predict: Predict, x: torch.Tensor, plan: StepPlan, report: Report, order: int
) -> torch.Tensor:
    ds: list[torch.Tensor] = []  # D at points i, i - 1, i - 2 (newest first)
    for i in range(plan.steps):
        ds = [predict(i, x).x0, *ds[: order - 1]]
        k = plan.order(i, order, len(ds))
        x = first_order(plan, i, x, ds[0]) if k == 1 else _update(plan, i, x, ds, k)
        x = report(i, x, ds[0])
    return x


def _update(
    plan: StepPlan, i: int, x: torch.Tensor, ds: list[torch.Tensor], k: int
) -> torch.Tensor:
    """The second (``k = 2``, midpoint form) or third (``k = 3``) order DPM-Solver++ step."""
    h = plan.h(i)
    phi_1 = math.expm1(-h)  # e^-h - 1
    base = (plan.sigma[i + 1] / plan.sigma[i]) * x - (plan.alpha[i + 1] * phi_1) * ds[0]
    r0 = plan.h(i - 1) / h
    d1_0 = (ds[0] - ds[1]) / r0
    if k == 2:
        return base - (0.5 * plan.alpha[i + 1] * phi_1) * d1_0
    r1 = plan.h(i - 2) / h
    d1_1 = (ds[1] - ds[2]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = phi_1 / h + 1  # (e^-h - 1) / h + 1
    phi_3 = (phi_1 + h) / h**2 - 0.5
    return base + (plan.alpha[i + 1] * phi_2) * d1 - (plan.alpha[i + 1] * phi_3) * d2


def dpmpp_2m_sde(
    predict: Predict, x: torch.Tensor, plan: StepPlan, noise: Noise, report: Report
) -> torch.Tensor:
    """Eq. (3): stochastic DPM-Solver++(2M), midpoint form; first order while warming up,
    and the last step returns ``D``."""
    d_prev: torch.Tensor | None = None
    for i in range(plan.steps):
        d = predict(i, x).x0
        if plan.ends_at_data(i):
            x = to_data(plan, i, x, d)
        else:
            h = plan.h(i)
            decay = -math.expm1(-2 * h)  # 1 - e^-2h
            x = (plan.sigma[i + 1] / plan.sigma[i] * math.exp(-h)) * x + (
                plan.alpha[i + 1] * decay
            ) * d
            if d_prev is not None and plan.order(i, 2, 2) == 2:
                x = x + (0.5 * plan.alpha[i + 1] * decay / (plan.h(i - 1) / h)) * (d - d_prev)
            x = x + (plan.sigma[i + 1] * math.sqrt(decay)) * noise(i, x)
        d_prev = d
        x = report(i, x, d)
    return x


DPMPP_2M = SolverFacts(dpmpp_2m, min_steps=2, draws_noise=never)
DPMPP_3M = SolverFacts(dpmpp_3m, min_steps=3, draws_noise=never)
DPMPP_2M_SDE = SolverFacts(dpmpp_2m_sde, min_steps=2, draws_noise=lambda eta, variance: True)
