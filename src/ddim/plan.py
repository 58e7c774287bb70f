"""The step plan: the points a sampler visits, built once from ``(sched, steps, spacing,
final_step)`` and walked by every solver (and backwards by :func:`ddim.invert`).

What a walk reports is plan vocabulary too: a callback sees a :class:`Step` after each
step, and :class:`Trajectory` holds every state of one run.

A :class:`StepPlan` holds, for each point, its timestep ``t``, ``a_t = alpha_bar_t``, and
``alpha_t = sqrt(a_t)``, ``sigma_t = sqrt(1 - a_t)`` and the half log-SNR
``lambda_t = log(alpha_t / sigma_t)`` as host floats, so a step issues no device-to-host
sync and eq. 12 of the DDIM paper rounds exactly as the official code does. Repeated
timesteps (``quad`` with large ``S``) are zero-length steps and appear once.

How a run ends (``final_step``): the plan's last point is ``t = -1`` (``alpha_bar = 1``),
reached by ``"denoise"`` (return the data prediction, DDIM's last step) or by
``"trapezoid"`` (:func:`to_data`); with ``"none"`` it is the smallest timestep, whose state
is returned as it is. :func:`first_order` is the DDIM step in log-SNR (eq. (2) of
:mod:`ddim.solvers`), which the multistep solvers take while they warm up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddim.names import FINAL_STEPS
from ddim.schedule import NoiseSchedule

#: With fewer steps than this, the step before the last runs at most at second order.
LOWER_ORDER_FINAL_BELOW = 15


Coefficient = float | torch.Tensor


def data_prediction(
    x: torch.Tensor, eps: torch.Tensor, alpha: Coefficient, sigma: Coefficient
) -> torch.Tensor:
    """Eq. 9 of the DDIM paper solved for ``x_0``: ``(x_t - sigma_t eps) / alpha_t``, with
    ``alpha = sqrt(alpha_bar)`` and ``sigma = sqrt(1 - alpha_bar)`` (floats, or tensors
    that broadcast against ``x``). The one place the library writes it."""
    return (x - sigma * eps) / alpha


def noise_prediction(
    x: torch.Tensor, x0: torch.Tensor, alpha: Coefficient, sigma: Coefficient
) -> torch.Tensor:
    """Eq. 9 solved for ``eps`` instead: ``(x_t - alpha_t x0) / sigma_t``."""
    return (x - alpha * x0) / sigma


@dataclass(frozen=True)
class Prediction:
    """The model's noise prediction at a point and the data prediction it implies
    (eq. 9: ``x0 = (x - sigma_t eps) / alpha_t``); with clipping, ``x0`` is clamped to
    ``[-1, 1]`` and ``eps`` is the noise that clamped ``x0`` implies."""

    eps: torch.Tensor
    x0: torch.Tensor


#: ``predict(i, x)``: the model's prediction at point ``i`` of the plan.
Predict = Callable[[int, torch.Tensor], Prediction]
#: ``noise(i, x)``: the standard normal ``z`` of step ``i``, shaped and typed like ``x``.
Noise = Callable[[int, torch.Tensor], torch.Tensor]
#: ``report(i, x, x0) -> x``: called after step ``i`` with the new state and the step's
#: ``x0``; the solver goes on from the state it returns (``x`` itself, or the state changed
#: between steps, as inpainting's replacement of the known pixels does).
Report = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``solver(predict, x, plan, noise, report) -> x``: one solver's walk over a plan.
SolverFunction = Callable[..., torch.Tensor]


def one_call_a_step(plan: StepPlan) -> int:
    """The model calls of a solver that calls the model once a step: ``plan.steps``."""
    return plan.steps


@dataclass(frozen=True)
class SolverFacts:
    """What a solver is, declared once beside its function: the ``function`` itself, the
    fewest steps its history needs (``min_steps``), whether it draws step noise at the given
    ``(eta, variance)`` (``draws_noise``), and how many model calls it makes over a plan
    (``calls``; zero-length steps are not in a plan, so they cost nothing)."""

    function: SolverFunction
    min_steps: int
    draws_noise: Callable[[float, str], bool]
    calls: Callable[[StepPlan], int] = one_call_a_step


def never(eta: float, variance: str) -> bool:
    """``draws_noise`` of a deterministic (ODE) solver."""
    return False


@dataclass(frozen=True)
class Step:
    """One step of a sampler, as its callback sees it, the same for every solver: the
    step's index ``i`` in the run (0 first), the timestep ``t`` it started from, the new
    state ``x`` and the prediction of ``x_0`` it was taken with (clipped if clipping is on).
    A fixed-point encoding step also reports its ``residual`` (:func:`ddim.invert`).
    """

    i: int
    t: int
    x: torch.Tensor
    x0_pred: torch.Tensor
    residual: float | None = None


Callback = Callable[[Step], None]


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


@dataclass(frozen=True)
class StepPlan:
    """The points of one sampling run, largest ``t`` first, as host floats (module doc)."""

    ts: tuple[int, ...]
    a: tuple[float, ...]
    alpha: tuple[float, ...]
    sigma: tuple[float, ...]
    lam: tuple[float, ...]
    final_step: str = "denoise"

    @classmethod
    def build(
        cls,
        sched: NoiseSchedule,
        steps: int | Sequence[int] = 50,
        spacing: str = "uniform",
        final_step: str = "denoise",
    ) -> StepPlan:
        """The plan over the distinct timesteps that ``steps`` and ``spacing`` give
        (:meth:`NoiseSchedule.timesteps`), then ``t = -1`` unless ``final_step`` is ``"none"``."""
        if final_step not in FINAL_STEPS:
            raise ValueError(
                f"unknown final_step {final_step!r}; choose one of {', '.join(FINAL_STEPS)}"
            )
        timesteps = sched.timesteps(steps, spacing).tolist()
        last = [] if final_step == "none" else [-1]
        ts = sorted(set(timesteps), reverse=True) + last
        a = tuple(sched.alpha_bar_at(t) for t in ts)
        alpha = tuple(math.sqrt(v) for v in a)
        sigma = tuple(math.sqrt(1 - v) for v in a)
        lam = tuple(
            math.log(al / si) if si > 0 else math.inf for al, si in zip(alpha, sigma, strict=True)
        )
        return cls(tuple(ts), a, alpha, sigma, lam, final_step)

    @property
    def steps(self) -> int:
        """The number of steps, ``len(ts) - 1``: one model call each for one-call solvers."""
        return len(self.ts) - 1

    @property
    def stochastic_steps(self) -> int:
        """The steps that may draw noise: all but a last step to ``alpha_bar = 1``. An
        explicit ``noise=`` has this many rows."""
        return self.steps - (self.steps > 0 and self.ends_at_data(self.steps - 1))

    def part(self, start: int, stop: int) -> StepPlan:
        """The plan of points ``start .. stop`` (steps ``start .. stop - 1``), as a walk that
        goes down part of the way and back up again (RePaint) runs it."""
        if not 0 <= start < stop <= self.steps:
            raise ValueError(f"no part {start}..{stop} of a plan of {self.steps} steps")
        cut = slice(start, stop + 1)
        return StepPlan(self.ts[cut], self.a[cut], self.alpha[cut], self.sigma[cut],
                        self.lam[cut], self.final_step)  # fmt: skip

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


def to_data(plan: StepPlan, i: int, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The last step, from point ``i`` to ``alpha_bar = 1``: ``D`` for ``"denoise"`` (eq. 2,
    Euler in ``sigma~ = sigma / alpha``); for ``"trapezoid"`` the trapezoidal rule in
    ``sigma~`` with the exact limit ``eps -> 0`` at ``sigma~ = 0`` of a smooth density,
    ``x~ - sigma~ eps / 2 = (x / alpha + D) / 2`` (no model call)."""
    if plan.final_step == "trapezoid":
        return 0.5 * (x / plan.alpha[i] + d)
    return d


def first_order(plan: StepPlan, i: int, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Eq. (2) of :mod:`ddim.solvers`, the DDIM step in log-SNR from point ``i`` to
    ``i + 1``; :func:`to_data` at the end."""
    if plan.ends_at_data(i):
        return to_data(plan, i, x, d)
    phi = math.expm1(-plan.h(i))
    return (plan.sigma[i + 1] / plan.sigma[i]) * x - (plan.alpha[i + 1] * phi) * d
