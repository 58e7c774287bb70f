"""Where a distilled student's steps land (Salimans & Ho, ICLR 2022): for each student point
``t = plan[2k]``, images noised to ``z_t`` are moved by the student's one DDIM step and by
its teacher's two (``t -> t' -> t''``, :func:`ddim.train.progressive.teacher_steps`).
A round has done its job at ``k`` when the student lands nearer the teacher's ``z''`` than
the teacher's own single step ``t -> t''`` does: that single step is what a student that
learnt nothing would give, since it starts from the teacher's weights.

Where a step lands is not what it costs in the samples: an error early in the plan is partly
undone by the steps after it. :func:`swapped_sample` samples along the student's plan with
one step ``k`` taken by the teacher's two instead, so judging those samples against the
student's own, on the same seeds, gives what each step costs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ddim.parameterization import Model
from ddim.schedule import NoiseSchedule
from ddim.train.progressive import alpha_sigma, ddim_step, teacher_steps


@dataclass(frozen=True)
class Landing:
    """One student point: its interval ``t -> t_end`` and the root-mean-square distance to
    the teacher's two-step ``z''`` of the student's step and of the teacher's single step."""

    t: int
    t_end: int
    student: float
    teacher_one_step: float

    def to_dict(self) -> dict[str, float]:
        """A JSON-friendly dict of the fields."""
        return asdict(self)


@torch.no_grad()
def landing_errors(
    student: Model,
    teacher: Model,
    sched: NoiseSchedule,
    x0: Tensor,
    noise: Tensor,
    teacher_plan: Sequence[int],
    predictions: tuple[str, str],
    y: Tensor | None = None,
) -> list[Landing]:
    """:class:`Landing` at every student point of ``teacher_plan[::2]``, for the images
    ``x0`` noised by ``noise`` (the same noise at every point). ``predictions`` are the
    teacher's and the student's parameterizations."""
    if len(teacher_plan) % 2:
        raise ValueError(f"a teacher plan has an even number of points, got {len(teacher_plan)}")
    points = [*teacher_plan, -1]
    rows = []
    for k in range(0, len(teacher_plan), 2):
        ts = tuple(torch.full((x0.shape[0],), points[k + i], dtype=torch.long) for i in range(3))
        alpha, sigma = alpha_sigma(sched, ts[0], x0)
        z = alpha * x0 + sigma * noise
        target = teacher_steps(teacher, sched, z, ts, predictions[0], y)
        by_student = ddim_step(student, sched, z, ts[0], ts[2], predictions[1], y)
        by_teacher = ddim_step(teacher, sched, z, ts[0], ts[2], predictions[0], y)
        rows.append(Landing(points[k], points[k + 2], _rms(by_student - target),
                            _rms(by_teacher - target)))  # fmt: skip
    return rows


def _rms(d: Tensor) -> float:
    return d.double().square().mean().sqrt().item()


@torch.no_grad()
def swapped_sample(
    student: Model,
    teacher: Model,
    sched: NoiseSchedule,
    x_T: Tensor,
    teacher_plan: Sequence[int],
    predictions: tuple[str, str],
    k: int | None,
    y: Tensor | None = None,
) -> Tensor:
    """DDIM (η = 0) from ``x_T`` along the student's plan ``teacher_plan[::2]``, with
    student step ``k`` (``t -> t''``) taken by the teacher's two steps ``t -> t' -> t''``;
    ``k = None`` is the student's own sample. ``predictions`` are the teacher's and the
    student's parameterizations."""
    points = [*teacher_plan, -1]
    if k is not None and not 0 <= 2 * k < len(teacher_plan):
        raise ValueError(f"the student has {len(teacher_plan) // 2} steps; no step {k}")
    z, swap = x_T, -1 if k is None else 2 * k
    for j in range(0, len(teacher_plan), 2):
        ts = tuple(torch.full((x_T.shape[0],), points[j + i], dtype=torch.long, device=x_T.device)
                   for i in range(3))  # fmt: skip
        if j == swap:
            z = teacher_steps(teacher, sched, z, ts, predictions[0], y)
        else:
            z = ddim_step(student, sched, z, ts[0], ts[2], predictions[1], y)
    return z
