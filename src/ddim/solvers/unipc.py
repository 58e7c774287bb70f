"""UniPC with B(h) = e^h - 1 ("bh2") of order 2 (Zhao et al. 2023, Alg. 2-3): the UniP
predictor, then the UniC corrector, which reuses the next step's model call."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ddim.plan import Noise, Predict, Report, SolverFacts, StepPlan, first_order, never


def _unic_weights(h: float, rks: Sequence[float]) -> list[float]:
    """UniC-bh2's weights of its divided differences (Zhao et al. 2023, Alg. 3, data
    prediction): solve ``R rho = b`` with ``R[k][j] = r_j^k`` over the nodes ``rks`` (the
    earlier points' ratios, then 1 for the new point), ``b_k = g_k k! / B(h)``,
    ``g_1 = (e^-h - 1)/(-h) - 1``, ``g_{k+1} = g_k/(-h) - 1/(k+1)!``, ``B(h) = e^-h - 1``.
    With the single node 1 (order 1) the weight is 1/2.
    """
    if len(rks) == 1:
        return [0.5]
    hh = -h
    b_h = math.expm1(hh)
    g = math.expm1(hh) / hh - 1
    b, factorial = [], 1
    for k in range(1, len(rks) + 1):
        b.append(g * factorial / b_h)
        factorial *= k + 1
        g = g / hh - 1 / factorial
    r = torch.tensor([[rk**k for rk in rks] for k in range(len(rks))], dtype=torch.float64)
    return torch.linalg.solve(r, torch.tensor(b, dtype=torch.float64)).tolist()


def unipc(
    predict: Predict, x: torch.Tensor, plan: StepPlan, noise: Noise, report: Report
) -> torch.Tensor:
    """UniPC-bh2 of order 2: the UniP predictor, then the UniC corrector at each new point
    using the model call made there anyway (none after the last step)."""
    ds: list[torch.Tensor] = []  # D at the last points, newest first
    x_before: torch.Tensor | None = None  # the state the last predictor started from
    k_prev = 0
    for i in range(plan.steps):
        d = predict(i, x).x0
        if x_before is not None:
            x = _unic(plan, i - 1, x_before, [d, *ds], k_prev)
        ds = [d, *ds[:1]]
        k_prev = plan.order(i, 2, len(ds))
        x_before = x
        x = first_order(plan, i, x, d) if k_prev == 1 else _unip(plan, i, x, ds)
        x = report(i, x, d)
    return x


def _unip(plan: StepPlan, i: int, x: torch.Tensor, ds: list[torch.Tensor]) -> torch.Tensor:
    """The second-order UniP-bh2 predictor from point ``i`` (its weight is 1/2)."""
    h = plan.h(i)
    rk = -plan.h(i - 1) / h
    b_h = math.expm1(-h)
    return first_order(plan, i, x, ds[0]) - (plan.alpha[i + 1] * b_h * 0.5 / rk) * (ds[1] - ds[0])


def _unic(
    plan: StepPlan, i: int, x_i: torch.Tensor, ds: list[torch.Tensor], k: int
) -> torch.Tensor:
    """The UniC-bh2 corrector of step ``i`` (order ``k + 1``): ``ds`` holds ``D`` at the new
    point ``i + 1``, then at ``i``, ``i - 1``."""
    h = plan.h(i)
    rks = [-plan.h(i - 1) / h] if k == 2 else []
    rhos = _unic_weights(h, [*rks, 1.0])
    b_h = math.expm1(-h)
    correction = rhos[-1] * (ds[0] - ds[1])
    if rks:
        correction = correction + (rhos[0] / rks[0]) * (ds[2] - ds[1])
    return first_order(plan, i, x_i, ds[1]) - (plan.alpha[i + 1] * b_h) * correction


UNIPC = SolverFacts(unipc, min_steps=2, draws_noise=never)
