"""High-order solvers of the probability-flow ODE (and one SDE) for an ε-model.

DDIM (η = 0) is the first-order solver of the probability-flow ODE in log-SNR. With
``alpha_t = sqrt(a_t)``, ``sigma_t = sqrt(1 - a_t)`` (``a = alpha_bar``), the half log-SNR
``lambda_t = log(alpha_t / sigma_t)`` and the data prediction (eq. 9 of the DDIM paper)
``D = (x - sigma_t eps) / alpha_t``, the exact solution from ``s`` to ``t`` is (Lu et al.
2022b, DPM-Solver++ eq. 9)::

    x_t = (sigma_t / sigma_s) x_s + sigma_t * int_{lambda_s}^{lambda_t} e^lambda D dlambda     (1)

and with ``D`` held constant over the step, ``h = lambda_t - lambda_s``::

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D_s                               (2)

which is exactly the DDIM step ``alpha_t D + sigma_t eps``. The solvers here differ in how
they approximate ``D`` (or ``eps``) over the step from the model calls they have made:

- ``dpmpp-2m``, ``dpmpp-3m``: DPM-Solver++ multistep (Lu et al. 2022b, Alg. 2 and its
  third-order form): ``D`` extrapolated linearly (quadratically) in ``lambda`` from the
  last two (three) calls.
- ``unipc``: UniPC with B(h) = e^h - 1 ("bh2"), order 2 (Zhao et al. 2023, Alg. 2-3): the
  UniP predictor, then the UniC corrector, which reuses the next step's model call.
- ``plms``: PNDM's pseudo linear multistep (Liu et al. 2022, eq. 12): Adams-Bashforth
  combinations of the last four ``eps`` fed to the DDIM step; its first step averages
  ``eps`` at both ends (two calls), as diffusers' ``PNDMScheduler(skip_prk_steps=True)``.
- ``heun``: Heun's method on ``dx~/dsigma~ = eps`` with ``x~ = x / alpha``,
  ``sigma~ = sigma / alpha`` (Karras et al. 2022, Alg. 1): two calls a step.
- ``dpmpp-2m-sde``: the SDE form of DPM-Solver++(2M) (Lu et al. 2022b, App. B; diffusers'
  ``sde-dpmsolver++``)::

      x_t = (sigma_t/sigma_s) e^-h x_s + alpha_t (1 - e^-2h) (D_s + D1 / 2)
            + sigma_t sqrt(1 - e^-2h) z                                                  (3)

The last step to ``alpha_bar = 1`` (``t = -1``, ``lambda = +inf``) is singular for every
extrapolation in ``lambda`` (the correction terms grow with ``h``), so it is taken in
``sigma~ = sigma / alpha``, where it is a finite interval
(:func:`ddim.solver_grid.to_data`): the first-order step (2), which returns the data
prediction ``D`` (DDIM's last step, ``"denoise"``), or the trapezoidal rule
(``"trapezoid"``); or it is left out (``"none"``). Before it, multistep solvers start at
order 1 and raise their order as calls accumulate; with fewer than
:data:`ddim.solver_grid.LOWER_ORDER_FINAL_BELOW` steps the step before the last is at most
second order (diffusers' ``lower_order_final``).

A solver is a plain function ``solver(denoise, x, grid, noise, report) -> x``: ``grid``
holds the schedule's scalars as host floats, ``denoise(i, x)`` calls the model at grid
point ``i``, ``report(i, x, x0)`` follows each step. Multistep history lives in locals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ddim.eps_solvers import heun, plms
from ddim.solver_grid import Denoise, Grid, Noise, Prediction, Report, first_order, to_data

__all__ = ["Grid", "Prediction", "SOLVER_FUNCTIONS", "ddim", "dpmpp_2m", "dpmpp_2m_sde",
           "dpmpp_3m", "heun", "model_calls", "plms", "to_data", "unipc"]  # fmt: skip


def ddim(
    denoise: Denoise, x: torch.Tensor, grid: Grid, noise: Noise, report: Report
) -> torch.Tensor:
    """DDIM (η = 0) as a one-step solver: eq. (2) at every step."""
    for i in range(grid.steps):
        d = denoise(i, x).x0
        x = first_order(grid, i, x, d)
        report(i, x, d)
    return x


def _dpmpp(order: int) -> Callable[[Denoise, torch.Tensor, Grid, Noise, Report], torch.Tensor]:
    def solve(
        denoise: Denoise, x: torch.Tensor, grid: Grid, noise: Noise, report: Report
    ) -> torch.Tensor:
        ds: list[torch.Tensor] = []  # D at points i, i - 1, i - 2 (newest first)
        for i in range(grid.steps):
            ds = [denoise(i, x).x0, *ds[: order - 1]]
            k = grid.order(i, order, len(ds))
            x = first_order(grid, i, x, ds[0]) if k == 1 else _dpmpp_update(grid, i, x, ds, k)
            report(i, x, ds[0])
        return x

    solve.__name__ = f"dpmpp_{order}m"
    solve.__doc__ = f"DPM-Solver++({order}M), data prediction (Lu et al. 2022b)."
    return solve


def _dpmpp_update(
    grid: Grid, i: int, x: torch.Tensor, ds: list[torch.Tensor], k: int
) -> torch.Tensor:
    """The second (``k = 2``, midpoint form) or third (``k = 3``) order DPM-Solver++ step."""
    h = grid.h(i)
    phi_1 = math.expm1(-h)  # e^-h - 1
    base = (grid.sigma[i + 1] / grid.sigma[i]) * x - (grid.alpha[i + 1] * phi_1) * ds[0]
    r0 = grid.h(i - 1) / h
    d1_0 = (ds[0] - ds[1]) / r0
    if k == 2:
        return base - (0.5 * grid.alpha[i + 1] * phi_1) * d1_0
    r1 = grid.h(i - 2) / h
    d1_1 = (ds[1] - ds[2]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = phi_1 / h + 1  # (e^-h - 1) / h + 1
    phi_3 = (phi_1 + h) / h**2 - 0.5
    return base + (grid.alpha[i + 1] * phi_2) * d1 - (grid.alpha[i + 1] * phi_3) * d2


dpmpp_2m = _dpmpp(2)
dpmpp_3m = _dpmpp(3)


def dpmpp_2m_sde(
    denoise: Denoise, x: torch.Tensor, grid: Grid, noise: Noise, report: Report
) -> torch.Tensor:
    """Eq. (3): stochastic DPM-Solver++(2M), midpoint form; first order while warming up,
    and the last step returns ``D``."""
    d_prev: torch.Tensor | None = None
    for i in range(grid.steps):
        d = denoise(i, x).x0
        if grid.ends_at_data(i):
            x = to_data(grid, i, x, d)
        else:
            h = grid.h(i)
            decay = -math.expm1(-2 * h)  # 1 - e^-2h
            x = (grid.sigma[i + 1] / grid.sigma[i] * math.exp(-h)) * x + (
                grid.alpha[i + 1] * decay
            ) * d
            if d_prev is not None and grid.order(i, 2, 2) == 2:
                x = x + (0.5 * grid.alpha[i + 1] * decay / (grid.h(i - 1) / h)) * (d - d_prev)
            x = x + (grid.sigma[i + 1] * math.sqrt(decay)) * noise(i, x)
        d_prev = d
        report(i, x, d)
    return x


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
    denoise: Denoise, x: torch.Tensor, grid: Grid, noise: Noise, report: Report
) -> torch.Tensor:
    """UniPC-bh2 of order 2: the UniP predictor, then the UniC corrector at each new point
    using the model call made there anyway (none after the last step)."""
    ds: list[torch.Tensor] = []  # D at the last points, newest first
    x_before: torch.Tensor | None = None  # the state the last predictor started from
    k_prev = 0
    for i in range(grid.steps):
        d = denoise(i, x).x0
        if x_before is not None:
            x = _unic(grid, i - 1, x_before, [d, *ds], k_prev)
        ds = [d, *ds[:1]]
        k_prev = grid.order(i, 2, len(ds))
        x_before = x
        x = first_order(grid, i, x, d) if k_prev == 1 else _unip(grid, i, x, ds)
        report(i, x, d)
    return x


def _unip(grid: Grid, i: int, x: torch.Tensor, ds: list[torch.Tensor]) -> torch.Tensor:
    """The second-order UniP-bh2 predictor from point ``i`` (its weight is 1/2)."""
    h = grid.h(i)
    rk = -grid.h(i - 1) / h
    b_h = math.expm1(-h)
    return first_order(grid, i, x, ds[0]) - (grid.alpha[i + 1] * b_h * 0.5 / rk) * (ds[1] - ds[0])


def _unic(grid: Grid, i: int, x_i: torch.Tensor, ds: list[torch.Tensor], k: int) -> torch.Tensor:
    """The UniC-bh2 corrector of step ``i`` (order ``k + 1``): ``ds`` holds ``D`` at the new
    point ``i + 1``, then at ``i``, ``i - 1``."""
    h = grid.h(i)
    rks = [-grid.h(i - 1) / h] if k == 2 else []
    rhos = _unic_weights(h, [*rks, 1.0])
    b_h = math.expm1(-h)
    correction = rhos[-1] * (ds[0] - ds[1])
    if rks:
        correction = correction + (rhos[0] / rks[0]) * (ds[2] - ds[1])
    return first_order(grid, i, x_i, ds[1]) - (grid.alpha[i + 1] * b_h) * correction


Solver = Callable[[Denoise, torch.Tensor, Grid, Noise, Report], torch.Tensor]

#: Every solver by name (the names, and each solver's order, are in :mod:`ddim.names`).
SOLVER_FUNCTIONS: dict[str, Solver] = {
    "ddim": ddim,
    "dpmpp-2m": dpmpp_2m,
    "dpmpp-3m": dpmpp_3m,
    "unipc": unipc,
    "plms": plms,
    "heun": heun,
    "dpmpp-2m-sde": dpmpp_2m_sde,
}


def model_calls(solver: str, grid: Grid) -> int:
    """The model evaluations ``solver`` makes on ``grid``: one per step, plus Heun's second
    call on every step that does not end at ``alpha_bar = 1`` and PLMS's on its first."""
    steps = grid.steps
    if solver == "heun":
        return steps + sum(not grid.ends_at_data(i) for i in range(steps))
    if solver == "plms" and steps and not grid.ends_at_data(0):
        return steps + 1
    return steps
