"""Progressive distillation's math (Salimans & Ho, ICLR 2022, Alg. 2): the rounds' plans, the
teacher's two DDIM steps and the target that one student step must reach.

With ``z_t = alpha_t x + sigma_t eps`` and the DDIM step (η = 0, eq. 12 of the DDIM paper)
``z_s = alpha_s x^ + (sigma_s / sigma_t)(z_t - alpha_t x^)``, the teacher takes two steps
``t -> t' -> t''``. The student's one step from ``t`` lands on the same ``z''`` exactly when
its data prediction is (Salimans & Ho, Alg. 2)::

    x~ = (z'' - (sigma'' / sigma_t) z_t) / (alpha'' - (sigma'' / sigma_t) alpha_t)     (1)

At the last step ``t'' = -1`` (``alpha_bar = 1``, ``sigma'' = 0``) this is ``x~ = z''``, the
teacher's final data prediction. Plans start at the top timestep ``T - 1`` (diffusers'
``trailing`` spacing): with few steps, a plan that starts lower never sees pure noise.
Round ``r``'s student takes every other point of its teacher's plan.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ddim.names import DISTILL_WEIGHTINGS
from ddim.parameterization import Model, to_pair
from ddim.schedule import NoiseSchedule


def distillation_plans(
    sched: NoiseSchedule, teacher_steps: int, student_steps: int
) -> list[tuple[int, ...]]:
    """The timesteps of every plan from the first teacher's down to the last student's:
    ``teacher_steps`` trailing points (``T - 1`` first), then every other point of the
    one before, until ``student_steps`` remain. ``teacher_steps / student_steps`` must be a
    power of two of at least 2."""
    ratio = teacher_steps // max(student_steps, 1)
    if (
        student_steps < 1
        or ratio < 2
        or ratio * student_steps != teacher_steps
        or ratio & (ratio - 1)
    ):
        raise ValueError(
            f"teacher_steps / student_steps must be a power of two >= 2, got "
            f"{teacher_steps} / {student_steps}"
        )
    if teacher_steps > sched.num_timesteps:
        raise ValueError(
            f"teacher_steps={teacher_steps} exceeds the schedule's {sched.num_timesteps} timesteps"
        )
    plans = [tuple(sched.timesteps(teacher_steps, "trailing").tolist())]
    while len(plans[-1]) > student_steps:
        plans.append(plans[-1][::2])
    return plans


def alpha_sigma(sched: NoiseSchedule, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """``alpha_t``, ``sigma_t`` per row of ``t`` (``t = -1`` is ``alpha_bar = 1``), in
    float64 then ``like``'s dtype, shaped to broadcast against ``like``."""
    table = torch.cat([sched.alpha_bar.new_ones(1), sched.alpha_bar]).to(t.device)
    a = table[t + 1].view(-1, *([1] * (like.ndim - 1)))
    return a.sqrt().to(like.dtype), (1 - a).sqrt().to(like.dtype)


def ddim_move(x0: Tensor, eps: Tensor, alpha_to: Tensor, sigma_to: Tensor) -> Tensor:
    """The η = 0 DDIM step to a point with coefficients ``alpha_to``, ``sigma_to`` (eq. 12)."""
    return alpha_to * x0 + sigma_to * eps


def student_target(z_t: Tensor, z_end: Tensor, coeffs: Sequence[Tensor]) -> Tensor:
    """Eq. (1): the data prediction whose DDIM step from ``z_t`` lands on ``z_end``;
    ``coeffs`` is ``(alpha_t, sigma_t, alpha'', sigma'')``."""
    alpha, sigma, alpha_end, sigma_end = coeffs
    ratio = sigma_end / sigma
    return (z_end - ratio * z_t) / (alpha_end - ratio * alpha)


def ddim_step(
    model: Model,
    sched: NoiseSchedule,
    z: Tensor,
    t: Tensor,
    t_end: Tensor,
    prediction: str,
    y: Tensor | None = None,
) -> Tensor:
    """The η = 0 DDIM step ``t -> t_end`` (eq. 12; ``t_end = -1`` is ``alpha_bar = 1``) of
    ``model`` from ``z`` (each row its own ``t``), its output read as ``prediction``
    (:func:`ddim.parameterization.to_pair`)."""
    alpha, sigma = alpha_sigma(sched, t, z)
    out = model(z, t, *(() if y is None else (y,))).to(z.dtype)
    eps, x0 = to_pair(out, z, alpha, sigma, prediction)
    return ddim_move(x0, eps, *alpha_sigma(sched, t_end, z))


@torch.no_grad()
def teacher_two_steps(
    teacher: Model,
    sched: NoiseSchedule,
    z_t: Tensor,
    ts: tuple[Tensor, Tensor, Tensor],
    prediction: str,
    y: Tensor | None = None,
) -> Tensor:
    """``z''``: the teacher's two DDIM steps ``t -> t' -> t''`` (:func:`ddim_step`)."""
    z_mid = ddim_step(teacher, sched, z_t, ts[0], ts[1], prediction, y)
    return ddim_step(teacher, sched, z_mid, ts[1], ts[2], prediction, y)


def loss_weight(alpha: Tensor, sigma: Tensor, weighting: str) -> Tensor:
    """The weight on the data error ``|x^ - x~|^2`` (Salimans & Ho, sec. 4): ``snr``,
    ``alpha^2 / sigma^2``, makes it the squared error of the implied ε (the teacher's own
    training loss, and the one an ε-student needs: its data error near ``t = T`` is its ε
    error times ``sigma / alpha ~ 160``); ``truncated-snr``, ``max(alpha^2 / sigma^2, 1)``,
    is the ε-loss at low noise and still a weight of 1 where ``alpha -> 0`` (for v- and
    x-students)."""
    snr = alpha.square() / sigma.square()
    if weighting == "snr":
        return snr
    if weighting == "truncated-snr":
        return snr.clamp(min=1.0)
    raise ValueError(f"weighting must be one of {', '.join(DISTILL_WEIGHTINGS)}, got {weighting!r}")


def distillation_loss(
    student: Model,
    teacher: Model,
    sched: NoiseSchedule,
    x0: Tensor,
    noise: Tensor,
    ts: tuple[Tensor, Tensor, Tensor],
    predictions: tuple[str, str],
    y: Tensor | None = None,
    weighting: str = "truncated-snr",
) -> Tensor:
    """Salimans & Ho's loss for one batch: ``x0`` noised by ``noise`` to ``z_t`` at each
    row's student point ``ts[0]``, the teacher's two steps through ``ts[1]`` to ``ts[2]``,
    the target of eq. (1), and the batch mean of :func:`loss_weight` times the mean squared
    error of the student's data prediction. ``predictions`` are the teacher's and the
    student's parameterizations."""
    alpha, sigma = alpha_sigma(sched, ts[0], x0)
    z_t = alpha * x0 + sigma * noise
    z_end = teacher_two_steps(teacher, sched, z_t, ts, predictions[0], y)
    target = student_target(z_t, z_end, (alpha, sigma, *alpha_sigma(sched, ts[2], z_t)))
    out = student(z_t, ts[0], *(() if y is None else (y,))).to(z_t.dtype)
    x0_pred = to_pair(out, z_t, alpha, sigma, predictions[1])[1]
    per_row = (x0_pred - target).square().flatten(1).mean(1)
    return (loss_weight(alpha, sigma, weighting).flatten() * per_row).mean()
