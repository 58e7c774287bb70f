"""The solvers of ``ddim.sample(solver=...)``: DDIM's eq. 12 and the high-order solvers of
the probability-flow ODE (and one SDE) for an ε-model, each a plain function.

- ``ddim`` (:func:`~ddim.solvers.eq12.ddim_solver`): the paper's generalized step, eq. 12,
  with any η (eq. 16) or Table 1's σ̂; at η = 0 it is the first-order ODE solver below.

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
- ``edict``, ``bdia``: EDICT (Wallace et al. 2023) and BDIA (Zhang et al. 2023), whose
  every step inverts in closed form, so :func:`ddim.invert` with them is exact to rounding
  (:mod:`ddim.solvers.exact`).
- ``dpmpp-2m-sde``: the SDE form of DPM-Solver++(2M) (Lu et al. 2022b, App. B; diffusers'
  ``sde-dpmsolver++``)::

      x_t = (sigma_t/sigma_s) e^-h x_s + alpha_t (1 - e^-2h) (D_s + D1 / 2)
            + sigma_t sqrt(1 - e^-2h) z                                                  (3)

The last step to ``alpha_bar = 1`` (``t = -1``, ``lambda = +inf``) is singular for every
extrapolation in ``lambda`` (the correction terms grow with ``h``), so it is taken in
``sigma~ = sigma / alpha``, where it is a finite interval
(:func:`ddim.plan.to_data`): the first-order step (2), which returns the data
prediction ``D`` (DDIM's last step, ``"denoise"``), or the trapezoidal rule
(``"trapezoid"``); or it is left out (``"none"``). Before it, multistep solvers start at
order 1 and raise their order as calls accumulate; with fewer than
:data:`ddim.plan.LOWER_ORDER_FINAL_BELOW` steps the step before the last is at most
second order (diffusers' ``lower_order_final``).

A solver is a plain function ``solver(predict, x, plan, noise, report) -> x`` (the exactly
invertible ones return their whole end state, a :class:`~ddim.latent.CoupledLatent` whose
first half is ``x``) over a
:class:`~ddim.plan.StepPlan`, which holds the schedule's scalars as host floats;
``predict(i, x)`` calls the model at point ``i``, ``noise(i, x)`` draws the ``z`` of step
``i`` and ``x = report(i, x, x0)`` follows each step (and may change the state between
steps: :mod:`ddim.inpaint`). Multistep history lives in locals.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddim.latent import CoupledLatent
from ddim.names import SOLVERS
from ddim.plan import Noise, Predict, Report, SolverFacts, StepPlan
from ddim.solvers.dpm import DPMPP_2M, DPMPP_2M_SDE, DPMPP_3M, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m
from ddim.solvers.eps import HEUN, PLMS, heun, plms
from ddim.solvers.eq12 import DDIM, ddim_solver
from ddim.solvers.exact import BDIA, EDICT, bdia, edict
from ddim.solvers.unipc import UNIPC, unipc

__all__ = ["FACTS", "Solver", "SolverFacts", "bdia", "ddim_solver", "dpmpp_2m", "dpmpp_2m_sde",
           "dpmpp_3m", "edict", "heun", "plms", "solver_facts", "unipc"]  # fmt: skip

Solver = Callable[[Predict, torch.Tensor, StepPlan, Noise, Report], torch.Tensor | CoupledLatent]

#: Every solver's facts by name, in the order of :data:`ddim.names.SOLVERS` (the names
#: ``--help`` offers without importing torch; a test checks that the two agree).
FACTS: dict[str, SolverFacts] = {
    "ddim": DDIM,
    "dpmpp-2m": DPMPP_2M,
    "dpmpp-3m": DPMPP_3M,
    "unipc": UNIPC,
    "plms": PLMS,
    "heun": HEUN,
    "dpmpp-2m-sde": DPMPP_2M_SDE,
    "edict": EDICT,
    "bdia": BDIA,
}


def solver_facts(solver: str) -> SolverFacts:
    """The :class:`~ddim.plan.SolverFacts` of ``solver``, else a ValueError naming the choices."""
    if solver not in FACTS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    return FACTS[solver]
