"""The solvers of :mod:`ddim.solvers` that step the noise prediction ``eps``: PNDM's
pseudo linear multistep (Liu et al. 2022) and Heun's method (Karras et al. 2022)."""

from __future__ import annotations

import torch

from ddim.solver_grid import Denoise, Grid, Noise, Report, to_data

#: PNDM's Adams-Bashforth weights of the newest ``eps`` first, by how many are known.
PLMS_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def _eps_step(grid: Grid, i: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The DDIM step of ``eps`` from point ``i`` to ``i + 1`` (PNDM's transfer, eq. 11)."""
    d = (x - grid.sigma[i] * eps) / grid.alpha[i]
    return grid.alpha[i + 1] * d + grid.sigma[i + 1] * eps


def plms(
    denoise: Denoise, x: torch.Tensor, grid: Grid, noise: Noise, report: Report
) -> torch.Tensor:
    """PNDM's pseudo linear multistep: ``eps' = sum_j w_j eps_{i-j}`` into the DDIM step.

    The first step is a pseudo improved-Euler step: the DDIM step with ``eps_0``, a call
    at its end, and the step again with the average of both (two calls).
    """
    history: list[torch.Tensor] = []
    for i in range(grid.steps):
        pred = denoise(i, x)
        history = [pred.eps, *history[:3]]
        if i == 0 and not grid.ends_at_data(0):
            trial = _eps_step(grid, 0, x, pred.eps)
            eps = 0.5 * (pred.eps + denoise(1, trial).eps)
        else:
            eps = sum(w * e for w, e in zip(PLMS_WEIGHTS[len(history)], history, strict=True))
        d = (x - grid.sigma[i] * eps) / grid.alpha[i]
        x_next = to_data(grid, i, x, d) if grid.ends_at_data(i) else _eps_step(grid, i, x, eps)
        report(i, x_next, d)
        x = x_next
    return x


def heun(
    denoise: Denoise, x: torch.Tensor, grid: Grid, noise: Noise, report: Report
) -> torch.Tensor:
    """Heun's method in ``(sigma~, x~)`` (Karras et al. 2022, Alg. 1); the step to
    ``sigma~ = 0`` is Euler's, which is the DDIM step."""
    for i in range(grid.steps):
        pred = denoise(i, x)
        if grid.ends_at_data(i):
            x = to_data(grid, i, x, pred.x0)
        else:
            s_i = grid.sigma[i] / grid.alpha[i]
            s_next = grid.sigma[i + 1] / grid.alpha[i + 1]
            x_tilde = x / grid.alpha[i]
            trial = (x_tilde + (s_next - s_i) * pred.eps) * grid.alpha[i + 1]
            eps_next = denoise(i + 1, trial).eps
            x = (x_tilde + (s_next - s_i) * 0.5 * (pred.eps + eps_next)) * grid.alpha[i + 1]
        report(i, x, pred.x0)
    return x
