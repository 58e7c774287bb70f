"""The grid a solver of :mod:`ddim.solvers` walks, and the steps every solver shares.

A :class:`Grid` holds, for each point, ``t``, ``alpha_t = sqrt(a_t)``, ``sigma_t =
sqrt(1 - a_t)`` and ``lambda_t = log(alpha_t / sigma_t)`` as host floats, so a step issues
no device-to-host sync. :func:`first_order` is eq. (2) of :mod:`ddim.solvers` (the DDIM
step in log-SNR) and :func:`to_data` the last step to ``alpha_bar = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddim.schedule import NoiseSchedule

#: With fewer steps than this, the step before the last runs at most at second order.
LOWER_ORDER_FINAL_BELOW = 15


@dataclass(frozen=True)
class Prediction:
    """The model's noise prediction at a point and the data prediction it implies."""

    eps: torch.Tensor
    x0: torch.Tensor


Denoise = Callable[[int, torch.Tensor], Prediction]
Noise = Callable[[int, torch.Tensor], torch.Tensor]
Report = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class Grid:
    """The points a solver visits, largest ``t`` first, as host floats.

    ``ts[-1]`` is ``-1`` (``alpha_bar = 1``) when the run ends with the denoising step,
    else the smallest timestep, whose state is returned as it is.
    """

    ts: tuple[int, ...]
    alpha: tuple[float, ...]
    sigma: tuple[float, ...]
    lam: tuple[float, ...]
    final_step: str = "denoise"

    @classmethod
    def build(cls, sched: NoiseSchedule, timesteps: Sequence[int], final_step: str) -> Grid:
        """The grid over distinct ``timesteps`` (any order), then ``t = -1`` unless
        ``final_step`` is ``"none"``."""
        last = [] if final_step == "none" else [-1]
        ts = sorted(set(int(t) for t in timesteps), reverse=True) + last
        a = [sched.alpha_bar_at(t) for t in ts]
        alpha = tuple(math.sqrt(v) for v in a)
        sigma = tuple(math.sqrt(1 - v) for v in a)
        lam = tuple(
            math.log(al / si) if si > 0 else math.inf for al, si in zip(alpha, sigma, strict=True)
        )
        return cls(tuple(ts), alpha, sigma, lam, final_step)

    @property
    def steps(self) -> int:
        """The number of steps, ``len(ts) - 1``."""
        return len(self.ts) - 1

    def h(self, i: int) -> float:
        """``lambda`` gained by step ``i`` (from point ``i`` to ``i + 1``)."""
        return self.lam[i + 1] - self.lam[i]

    def ends_at_data(self, i: int) -> bool:
        """Whether step ``i`` goes to ``alpha_bar = 1``."""
        return self.sigma[i + 1] == 0.0

    def order(self, i: int, order: int, calls_so_far: int) -> int:
        """The order of multistep step ``i``: warm-up, the lower-order final steps."""
        order = min(order, calls_so_far)
        if self.ends_at_data(i):
            return 1
        if self.steps < LOWER_ORDER_FINAL_BELOW:
            order = min(order, self.steps - i)
        return order


def to_data(grid: Grid, i: int, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The last step, from point ``i`` to ``alpha_bar = 1``: ``D`` for ``"denoise"`` (eq. 2,
    Euler in ``sigma~``); for ``"trapezoid"`` the trapezoidal rule in ``sigma~`` with the
    exact limit ``eps -> 0`` at ``sigma~ = 0`` of a smooth density,
    ``x~ - sigma~ eps / 2 = (x / alpha + D) / 2`` (no model call)."""
    if grid.final_step == "trapezoid":
        return 0.5 * (x / grid.alpha[i] + d)
    return d


def first_order(grid: Grid, i: int, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Eq. (2), the DDIM step from point ``i`` to ``i + 1``; :func:`to_data` at the end."""
    if grid.ends_at_data(i):
        return to_data(grid, i, x, d)
    phi = math.expm1(-grid.h(i))
    return (grid.sigma[i + 1] / grid.sigma[i]) * x - (grid.alpha[i + 1] * phi) * d
