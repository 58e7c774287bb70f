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

The first teacher may walk each student step's part of its plan with a higher-order solver
of the probability-flow ODE instead of DDIM (:func:`solver_landing`), and a student step
may span ``hops`` teacher steps instead of two. Every round adds its student's error to its
teacher's; a first teacher closer to the ODE's map for the same calls, and fewer rounds
(16 -> 4 in one round of ``hops = 4``; TRACT, Berthelot et al. 2023, distils in few long
hops for that reason), leave less to add up.

A run whose teacher and student take the same number of steps has one round that only
re-parameterizes: the student's one step matches the teacher's one step (``t -> t'``), so
eq. (1) gives back the teacher's own data prediction. It turns an ε-teacher into a v- or
x-student on the plan's points before the halving rounds, which an ε-student cannot go
through at ``t = T - 1``, where its data prediction divides by ``alpha ~ 0.006``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ddim.names import DISTILL_WEIGHTINGS
from ddim.parameterization import Model, to_pair
from ddim.sampler_options import SamplerOptions
from ddim.sampling import walk
from ddim.schedule import NoiseSchedule


def distillation_plans(
    sched: NoiseSchedule,
    teacher_steps: int,
    student_steps: int,
    hops: int = 2,
    spacing: str = "trailing",
) -> list[tuple[int, ...]]:
    """The timesteps of every plan from the first teacher's down to the last student's:
    ``teacher_steps`` points laid out by ``spacing`` (:meth:`NoiseSchedule.timesteps`;
    ``trailing`` and ``linspace`` start at ``T - 1``, and ``linspace`` ends at ``t = 0``),
    largest first, then every ``hops``-th point of the one before (every other one:
    Salimans & Ho), until ``student_steps`` remain. ``teacher_steps / student_steps`` must be
    a power of ``hops``; at 1 the two plans are the same (a re-parameterization round)."""
    ratio = teacher_steps // max(student_steps, 1)
    power = ratio
    while hops > 1 and power > 1 and power % hops == 0:
        power //= hops
    if student_steps < 1 or ratio * student_steps != teacher_steps or power != 1:
        raise ValueError(
            f"teacher_steps / student_steps must be a power of hops = {hops}, got "
            f"{teacher_steps} / {student_steps}"
        )
    if teacher_steps > sched.num_timesteps:
        raise ValueError(
            f"teacher_steps={teacher_steps} exceeds the schedule's {sched.num_timesteps} timesteps"
        )
    first = sorted(set(sched.timesteps(teacher_steps, spacing).tolist()), reverse=True)
    if len(first) != teacher_steps:
        raise ValueError(
            f"{spacing} spacing gives {len(first)} distinct timesteps for teacher_steps="
            f"{teacher_steps}"
        )
    plans = [tuple(first)]
    if ratio == 1:
        return [plans[0], plans[0]]
    while len(plans[-1]) > student_steps:
        plans.append(plans[-1][::hops])
    return plans


def student_points(
    teacher_plan: Sequence[int], student_plan: Sequence[int], k: Tensor
) -> tuple[Tensor, ...]:
    """The points a student step ``k`` spans in its teacher's plan (``-1`` after the last):
    ``t, t', t''`` when the student halves the plan, ``t, t'`` when it re-parameterizes,
    ``hops + 1`` points in general."""
    hops = len(teacher_plan) // len(student_plan)
    ts = torch.tensor([*teacher_plan, -1], device=k.device)
    return tuple(ts[hops * k + i] for i in range(hops + 1))


def alpha_sigma(sched: NoiseSchedule, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """``alpha_t``, ``sigma_t`` per row of ``t`` (``t = -1`` is ``alpha_bar = 1``), in
    float64 then ``like``'s dtype, shaped to broadcast against ``like``."""
    table = torch.cat([sched.alpha_bar.new_ones(1), sched.alpha_bar]).to(t.device)
    a = table[t + 1].view(-1, *([1] * (like.ndim - 1)))
    return a.sqrt().to(like.dtype), (1 - a).sqrt().to(like.dtype)


def ddim_move(x0: Tensor, eps: Tensor, alpha_to: Tensor, sigma_to: Tensor) -> Tensor:
    """The η = 0 DDIM step to a point with coefficients ``alpha_to``, ``sigma_to`` (eq. 12)."""
    return alpha_to * x0 + sigma_to * eps


def step_gain(coeffs: Sequence[Tensor]) -> Tensor:
    """Eq. (1)'s denominator, ``alpha'' - (sigma'' / sigma_t) alpha_t``: how far the DDIM step
    ``t -> t''`` moves where it lands per unit of error in its data prediction;
    ``coeffs`` is ``(alpha_t, sigma_t, alpha'', sigma'')``."""
    alpha, sigma, alpha_end, sigma_end = coeffs
    return alpha_end - sigma_end / sigma * alpha


def student_target(z_t: Tensor, z_end: Tensor, coeffs: Sequence[Tensor]) -> Tensor:
    """Eq. (1): the data prediction whose DDIM step from ``z_t`` lands on ``z_end``;
    ``coeffs`` is ``(alpha_t, sigma_t, alpha'', sigma'')``."""
    _, sigma, _, sigma_end = coeffs
    return (z_end - sigma_end / sigma * z_t) / step_gain(coeffs)


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
def teacher_steps(
    teacher: Model,
    sched: NoiseSchedule,
    z_t: Tensor,
    ts: Sequence[Tensor],
    prediction: str,
    y: Tensor | None = None,
) -> Tensor:
    """Where the teacher's DDIM steps through the points ``ts`` land: ``z''`` for the two
    steps ``t -> t' -> t''`` of a halving round (:func:`ddim_step`)."""
    z = z_t
    for start, end in zip(ts[:-1], ts[1:], strict=True):
        z = ddim_step(teacher, sched, z, start, end, prediction, y)
    return z


def _no_noise(i: int, x: Tensor) -> Tensor:
    raise RuntimeError("a deterministic teacher solver draws no noise")


def _unchanged(i: int, x: Tensor, x0: Tensor) -> Tensor:
    return x


@torch.no_grad()
def solver_landing(
    teacher: Model,
    sched: NoiseSchedule,
    run: SamplerOptions,
    z_t: Tensor,
    k: Tensor,
    hops: int,
    y: Tensor | None = None,
) -> Tensor:
    """Where the teacher's walk lands from each row's student point when it samples as
    ``run`` says (its solver over its plan, :func:`ddim.sampling.walk`): row ``i`` walks the
    plan's steps ``hops k_i .. hops (k_i + 1) - 1`` from ``z_t[i]``. Rows that share a
    student step walk together; each part starts afresh, so a multistep solver warms up
    again at each student point, as it would from that point alone."""
    plan = run.plan(sched)
    z_end = torch.empty_like(z_t)
    for j in k.unique().tolist():
        rows = (k == j).nonzero().flatten()
        part = plan.part(hops * j, hops * (j + 1))
        z_end[rows] = walk(teacher, z_t[rows], sched, run, part, _no_noise, _unchanged,
                           y=None if y is None else y[rows])  # fmt: skip
    return z_end


def loss_weight(
    alpha: Tensor,
    sigma: Tensor,
    weighting: str,
    end: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The weight on the data error ``|x^ - x~|^2`` (Salimans & Ho, sec. 4): ``snr``,
    ``alpha^2 / sigma^2``, makes it the squared error of the implied ε (the teacher's own
    training loss, and the one an ε-student needs: its data error near ``t = T`` is its ε
    error times ``sigma / alpha ~ 160``); ``truncated-snr``, ``max(alpha^2 / sigma^2, 1)``,
    is the ε-loss at low noise and still a weight of 1 where ``alpha -> 0`` (for v- and
    x-students); ``landing``, :func:`step_gain` squared, makes it the squared distance
    between where the student's step lands and ``z''``, since that step moves by its gain
    times the data error. ``end`` is ``(alpha'', sigma'')``, needed by ``landing`` only."""
    snr = alpha.square() / sigma.square()
    if weighting == "snr":
        return snr
    if weighting == "truncated-snr":
        return snr.clamp(min=1.0)
    if weighting == "landing":
        if end is None:
            raise ValueError("the landing weight needs the end point's (alpha'', sigma'')")
        return step_gain((alpha, sigma, *end)).square()
    raise ValueError(f"weighting must be one of {', '.join(DISTILL_WEIGHTINGS)}, got {weighting!r}")


def distillation_loss(
    student: Model,
    teacher: Model,
    sched: NoiseSchedule,
    x0: Tensor,
    noise: Tensor,
    ts: Sequence[Tensor],
    predictions: tuple[str, str],
    y: Tensor | None = None,
    weighting: str = "truncated-snr",
    landing: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Salimans & Ho's loss for one batch: ``x0`` noised by ``noise`` to ``z_t`` at each
    row's student point ``ts[0]``, the teacher's DDIM steps through ``ts``
    (:func:`student_points`: two for a halving round, one to re-parameterize) or, if given,
    ``landing(z_t)`` (:func:`solver_landing`), the target of eq. (1), and the batch mean of
    :func:`loss_weight` times the mean squared error of the student's data prediction.
    ``predictions`` are the teacher's and the student's parameterizations."""
    alpha, sigma = alpha_sigma(sched, ts[0], x0)
    z_t = alpha * x0 + sigma * noise
    if landing is None:
        z_end = teacher_steps(teacher, sched, z_t, ts, predictions[0], y)
    else:
        z_end = landing(z_t)
    end = alpha_sigma(sched, ts[-1], z_t)
    target = student_target(z_t, z_end, (alpha, sigma, *end))
    out = student(z_t, ts[0], *(() if y is None else (y,))).to(z_t.dtype)
    x0_pred = to_pair(out, z_t, alpha, sigma, predictions[1])[1]
    per_row = (x0_pred - target).square().flatten(1).mean(1)
    return (loss_weight(alpha, sigma, weighting, end).flatten() * per_row).mean()
