"""Exactly invertible samplers: EDICT (Wallace et al. 2023) and BDIA (Zhang et al. 2023).

Both are built from the DDIM move of eq. 12 at ``eta = 0`` from point ``i`` to point ``j``
with a noise prediction ``e`` made elsewhere (``a_ij = alpha_j / alpha_i``,
``b_ij = sigma_j - alpha_j sigma_i / alpha_i``)::

    D_ij(z, e) = a_ij z + b_ij e                                                        (1)

- EDICT keeps two sequences and lets each be moved by the other's prediction, then mixes
  them with weight ``p`` (the paper's eqs. 14-15)::

      x' = D(x, eps(y));  y' = D(y, eps(x'));  x'' = p x' + (1-p) y';  y'' = p y' + (1-p) x''  (2)

  Every line can be solved for its input, so the step inverts in closed form (two model
  calls either way). Mixing contracts ``x - y`` by ``p^2`` a step, so the inverse expands it
  by ``1 / p^2``, ``p ** (-2 S)`` over ``S`` steps. The paper's 0.93 is for 50 steps; the
  default (:func:`edict_p_for`) keeps that expansion at longer plans, and an encoding whose
  expansion would pass ``EDICT_MAX_EXPANSION`` is refused (:func:`check_edict_inverse`).
- BDIA replaces DDIM's step from ``z_k`` by a symmetric two-step form that also uses
  ``z_{k-1}`` and the move back up with the same prediction (eq. 13 of the paper)::

      z_{k+1} = gamma z_{k-1} + D_{k,k+1}(z_k, e_k) - gamma D_{k,k-1}(z_k, e_k)           (3)

  with ``e_k = eps(z_k)``; solved for ``z_{k-1}`` it runs backwards with the same call. The
  first step, with no ``z_{-1}``, is DDIM's. ``gamma = 1`` is the fully symmetric form.

Their latent is the whole state at the top of the plan (:class:`ddim.latent.CoupledLatent`);
a plain ``x_T`` starts EDICT with ``x = y = x_T`` and BDIA with DDIM's first step. Both
return their whole state at the end of the plan too (the image first), and their inverses
start from it as well as from an image: from the end state an encoding retraces the
sampling run exactly, which a round trip through another condition (DDIB) needs.
"""

from __future__ import annotations

import math

import torch

from ddim.latent import CoupledLatent
from ddim.names import BDIA_GAMMA, EDICT_MAX_EXPANSION, EDICT_P, EDICT_PAPER_STEPS
from ddim.plan import Noise, Predict, Report, SolverFacts, StepPlan, never


def move(plan: StepPlan, i: int, j: int, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Eq. (1): the DDIM move of ``z`` from point ``i`` to point ``j`` with ``eps``."""
    a = plan.alpha[j] / plan.alpha[i]
    return a * z + (plan.sigma[j] - a * plan.sigma[i]) * eps


def unmove(plan: StepPlan, i: int, j: int, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The ``z`` whose :func:`move` from ``i`` to ``j`` with ``eps`` is the given one."""
    a = plan.alpha[j] / plan.alpha[i]
    return (z - (plan.sigma[j] - a * plan.sigma[i]) * eps) / a


def check_coupling(name: str, value: float) -> None:
    """Refuse a coupling parameter outside ``(0, 1]``, where the step cannot be inverted
    (0) or its inverse blows up (negative or above 1)."""
    if not 0 < value <= 1:
        raise ValueError(f"{name} must lie in (0, 1], got {value}")


def edict_p_for(steps: int) -> float:
    """EDICT's default mixing weight over ``steps`` steps: the paper's 0.93 up to 50 steps,
    then ``0.93 ** (50 / steps)``, whose whole expansion ``p ** (-2 S)`` is the paper's at
    50 steps (1.4e3); at 1000 steps, 0.99638."""
    return EDICT_P ** (EDICT_PAPER_STEPS / max(steps, EDICT_PAPER_STEPS))


def check_edict_inverse(p: float, steps: int) -> None:
    """Refuse to encode with EDICT's ``p`` over ``steps`` steps when the inverse's expansion
    of ``x - y``, ``p ** (-2 S)``, passes ``EDICT_MAX_EXPANSION``; the error names the
    range of ``p`` that ``steps`` allows. On ``mnist``, 0.93 over 120 steps (3.7e7)
    still comes back to 1e-8 but its latent has a standard deviation of 100; over 135 steps
    (3.2e8) it comes back only to 1.8e-5 (docs/results/table2-reconstruction.md)."""
    check_coupling("edict_p", p)
    expansion = p ** (-2.0 * steps)
    if expansion > EDICT_MAX_EXPANSION:
        low = EDICT_MAX_EXPANSION ** (-1 / (2 * steps))
        raise ValueError(
            f"edict_p {p} cannot encode over {steps} steps: the inverse expands x - y by "
            f"p^(-2S) = {expansion:.1e} (at most {EDICT_MAX_EXPANSION:.0e}); take edict_p in "
            f"[{math.ceil(low * 1e4) / 1e4}, 1], or leave it unset ({edict_p_for(steps):.5f})"
        )


def edict(
    predict: Predict,
    x: torch.Tensor | CoupledLatent,
    plan: StepPlan,
    noise: Noise,
    report: Report,
    *,
    p: float | None = None,
) -> CoupledLatent:
    """Eq. (2) at every step of ``plan`` from ``x`` (a tensor, or EDICT's latent); returns
    the end state ``(x, y)``, ``x`` the image. ``p`` defaults to :func:`edict_p_for` the
    plan's steps."""
    p = edict_p_for(plan.steps) if p is None else p
    check_coupling("edict_p", p)
    xs, ys = (x.first, x.second) if isinstance(x, CoupledLatent) else (x, x)
    for i in range(plan.steps):
        first = predict(i, ys)
        x_mid = move(plan, i, i + 1, xs, first.eps)
        y_mid = move(plan, i, i + 1, ys, predict(i, x_mid).eps)
        xs = p * x_mid + (1 - p) * y_mid
        ys = p * y_mid + (1 - p) * xs
        xs = report(i, xs, first.x0)
    return CoupledLatent("edict", xs, ys)


def edict_inverse(
    predict: Predict, x0: torch.Tensor | CoupledLatent, plan: StepPlan, *, p: float | None = None
) -> CoupledLatent:
    """Eq. (2) solved backwards over ``plan`` from ``x = y = x0`` at its last point (or from
    the end state :func:`edict` returned): the latent :func:`edict` maps back to it. ``p`` as
    for :func:`edict`; one whose expansion the plan cannot bear is refused
    (:func:`check_edict_inverse`)."""
    p = edict_p_for(plan.steps) if p is None else p
    check_edict_inverse(p, plan.steps)
    xs, ys = (x0.first, x0.second) if isinstance(x0, CoupledLatent) else (x0, x0)
    for i in range(plan.steps - 1, -1, -1):
        y_mid = (ys - (1 - p) * xs) / p
        x_mid = (xs - (1 - p) * y_mid) / p
        ys = unmove(plan, i, i + 1, y_mid, predict(i, x_mid).eps)
        xs = unmove(plan, i, i + 1, x_mid, predict(i, ys).eps)
    return CoupledLatent("edict", xs, ys)


def bdia(
    predict: Predict,
    x: torch.Tensor | CoupledLatent,
    plan: StepPlan,
    noise: Noise,
    report: Report,
    *,
    gamma: float = BDIA_GAMMA,
) -> CoupledLatent:
    """Eq. (3) over ``plan`` from ``x`` (a tensor: DDIM's first step; or BDIA's latent, the
    states at points 0 and 1); returns the states at the last point (the image) and the
    one before."""
    check_coupling("bdia_gamma", gamma)
    if isinstance(x, CoupledLatent):
        before, z, start = x.first, x.second, 1
    else:
        pred = predict(0, x)
        before, z, start = x, move(plan, 0, 1, x, pred.eps), 1
        z = report(0, z, pred.x0)
    for k in range(start, plan.steps):
        pred = predict(k, z)
        up = move(plan, k, k - 1, z, pred.eps)
        before, z = z, gamma * before + move(plan, k, k + 1, z, pred.eps) - gamma * up
        z = report(k, z, pred.x0)
    return CoupledLatent("bdia", z, before)


def bdia_inverse(
    predict: Predict, x0: torch.Tensor | CoupledLatent, plan: StepPlan, *,
    gamma: float = BDIA_GAMMA,
) -> CoupledLatent:  # fmt: skip
    """Eq. (3) solved for ``z_{k-1}`` over ``plan``, from ``x0`` at its last point and the
    DDIM encoding step to the point before (or from the end state :func:`bdia` returned):
    the latent :func:`bdia` maps back to it."""
    check_coupling("bdia_gamma", gamma)
    last = plan.steps
    if isinstance(x0, CoupledLatent):
        after, z = x0.first, x0.second
    else:
        after = x0
        z = move(plan, last, last - 1, x0, predict(last - 1, x0).eps)  # DDIM's encoding step
    for k in range(last - 1, 0, -1):
        e = predict(k, z).eps
        down = move(plan, k, k + 1, z, e)
        before = (after - down + gamma * move(plan, k, k - 1, z, e)) / gamma
        after, z = z, before
    return CoupledLatent("bdia", z, after)


def _twice(plan: StepPlan) -> int:
    return 2 * plan.steps


EDICT = SolverFacts(edict, min_steps=1, draws_noise=never, calls=_twice)
BDIA = SolverFacts(bdia, min_steps=1, draws_noise=never)
