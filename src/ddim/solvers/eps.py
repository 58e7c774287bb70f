"""The solvers that step the noise prediction ``eps``: PNDM's
pseudo linear multistep (Liu et al. 2022) and Heun's method (Karras et al. 2022)."""

from __future__ import annotations

import torch

from ddim.plan import (
    Noise,
    Predict,
    Report,
    SolverFacts,
    StepPlan,
    data_prediction,
    never,
    to_data,
)

#: PNDM's Adams-Bashforth weights of the newest ``eps`` first, by how many are known.
PLMS_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def _eps_step(plan: StepPlan, i: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The DDIM step of ``eps`` from point ``i`` to ``i + 1`` (PNDM's transfer, eq. 11)."""
    d = data_prediction(x, eps, plan.alpha[i], plan.sigma[i])
    return plan.alpha[i + 1] * d + plan.sigma[i + 1] * eps


def plms(
    predict: Predict, x: torch.Tensor, plan: StepPlan, noise: Noise, report: Report
) -> torch.Tensor:
    """PNDM's pseudo linear multistep: ``eps' = sum_j w_j eps_{i-j}`` into the DDIM step.

    The first step is a pseudo improved-Euler step: the DDIM step with ``eps_0``, a call
    at its end, and the step again with the average of both (two calls).
    """
    history: list[torch.Tensor] = []
    for i in range(plan.steps):
        pred = predict(i, x)
        history = [pred.eps, *history[:3]]
        if i == 0 and not plan.ends_at_data(0):
            trial = _eps_step(plan, 0, x, pred.eps)
            eps = 0.5 * (pred.eps + predict(1, trial).eps)
        else:
            eps = sum(w * e for w, e in zip(PLMS_WEIGHTS[len(history)], history, strict=True))
        d = data_prediction(x, eps, plan.alpha[i], plan.sigma[i])
        x_next = to_data(plan, i, x, d) if plan.ends_at_data(i) else _eps_step(plan, i, x, eps)
        x = report(i, x_next, d)
    return x


def heun(
    predict: Predict, x: torch.Tensor, plan: StepPlan, noise: Noise, report: Report
) -> torch.Tensor:
    """Heun's method in ``(sigma~, x~)`` (Karras et al. 2022, Alg. 1); the step to
    ``sigma~ = 0`` is Euler's, which is the DDIM step."""
    for i in range(plan.steps):
        pred = predict(i, x)
        if plan.ends_at_data(i):
            x = to_data(plan, i, x, pred.x0)
        else:
            s_i = plan.sigma[i] / plan.alpha[i]
            s_next = plan.sigma[i + 1] / plan.alpha[i + 1]
            x_tilde = x / plan.alpha[i]
            trial = (x_tilde + (s_next - s_i) * pred.eps) * plan.alpha[i + 1]
            eps_next = predict(i + 1, trial).eps
            x = (x_tilde + (s_next - s_i) * 0.5 * (pred.eps + eps_next)) * plan.alpha[i + 1]
        x = report(i, x, pred.x0)
    return x


def _plms_calls(plan: StepPlan) -> int:
    """One call a step, and PNDM's second call on its first step (unless that step ends
    at the data)."""
    return plan.steps + (plan.steps > 0 and not plan.ends_at_data(0))


def _heun_calls(plan: StepPlan) -> int:
    """Two calls on every step but one to ``alpha_bar = 1`` (Euler there)."""
    return plan.steps + sum(not plan.ends_at_data(i) for i in range(plan.steps))


PLMS = SolverFacts(plms, min_steps=2, draws_noise=never, calls=_plms_calls)
HEUN = SolverFacts(heun, min_steps=2, draws_noise=never, calls=_heun_calls)
