"""Where a student's steps land (``ddim.eval.landing``): exact on the Gaussian oracle in
float64, with the sampler itself as the reference for the teacher's steps."""

from __future__ import annotations

import torch

import ddim
from ddim.eval.exact_gaussian import DiagonalGaussian, power_law_spectrum
from ddim.eval.landing import landing_errors
from ddim.parameterization import from_pair
from ddim.train.progressive import (
    alpha_sigma,
    distillation_plans,
    student_target,
    teacher_steps,
)

F64 = torch.float64
SCHED = ddim.NoiseSchedule.linear()
PLAN = distillation_plans(SCHED, 8, 4)[0]  # 999, 874, ..., 124


class TargetStudent(torch.nn.Module):
    """A v-student whose output is Salimans & Ho's target itself (eq. 1 of
    ``ddim.train.progressive``): its one step lands on the teacher's two exactly."""

    def __init__(self, teacher: DiagonalGaussian) -> None:
        super().__init__()
        self.teacher, self.next = teacher, dict(zip(PLAN, [*PLAN[1:], -1], strict=True))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mid = torch.tensor([self.next[int(v)] for v in t])
        end = torch.tensor([self.next.get(int(v), -1) for v in mid])
        alpha, sigma = alpha_sigma(SCHED, t, z)
        z_end = teacher_steps(self.teacher, SCHED, z, (t, mid, end), "eps")
        x = student_target(z, z_end, (alpha, sigma, *alpha_sigma(SCHED, end, z)))
        return from_pair((z - alpha * x) / sigma, x, alpha, sigma, "v")


def _draws() -> tuple[DiagonalGaussian, torch.Tensor, torch.Tensor]:
    lam = power_law_spectrum(6)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 6, generator=g, dtype=F64) * lam.sqrt()
    return DiagonalGaussian(lam, SCHED), x0, torch.randn(64, 6, generator=g, dtype=F64)


def test_the_exact_target_lands_and_the_teacher_itself_does_not() -> None:
    teacher, x0, noise = _draws()
    exact = landing_errors(TargetStudent(teacher), teacher, SCHED, x0, noise, PLAN, ("eps", "v"))
    itself = landing_errors(teacher, teacher, SCHED, x0, noise, PLAN, ("eps", "eps"))
    assert [r.t for r in exact] == [999, 749, 499, 249]
    assert [r.t_end for r in exact] == [749, 499, 249, -1]
    for a, b in zip(exact, itself, strict=True):
        assert a.student < 1e-12
        assert b.student == b.teacher_one_step == a.teacher_one_step > 1e-4


def test_the_teachers_steps_are_the_samplers() -> None:
    """At the last student point (249 -> alpha_bar = 1) the teacher's single step and two
    steps are ``ddim.sample`` over ``[249]`` and over ``[249, 124]``."""
    teacher, x0, noise = _draws()
    last = landing_errors(teacher, teacher, SCHED, x0, noise, PLAN, ("eps", "eps"))[-1]
    alpha, sigma = alpha_sigma(SCHED, torch.tensor([249]), x0)
    z = alpha * x0 + sigma * noise
    one, two = (ddim.sample(teacher, z, SCHED, steps=s) for s in ([249], [249, 124]))
    assert abs(last.teacher_one_step - (one - two).square().mean().sqrt().item()) < 1e-14
