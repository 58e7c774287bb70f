"""Inpainting with a DDIM model: fill the pixels where ``mask = 0``, keep those where ``mask = 1``.

The sampler walks the step plan with eq. 12 (any η; RePaint's ancestral step is η = 1), and
the known pixels steer it in one of three ways:

- ``replace`` (the replacement method; Song et al. 2021, App. I.2): after every step to a
  point with ``a = alpha_bar``, the known region is replaced by the forward-noised original
  ``sqrt(a) x_0 + sqrt(1 - a) z`` (fresh ``z``);
- ``repaint`` (Lugmayr et al. 2022): ``replace`` with resampling: after coming down to a
  level, go back up ``jump_length`` levels with the forward process
  ``x_up = sqrt(a_up / a) x + sqrt(1 - a_up / a) z`` and come down again, ``resample - 1``
  times, so the unknown region can agree with the known one;
- ``dps`` (Chung et al. 2023): each step is moved along
  ``-zeta * grad_x |mask * (x0_pred - x_0)|^2 / |mask * (x0_pred - x_0)|``, the gradient taken
  through the model;
- ``ddnm`` (Wang, Yu & Zhang 2023, the null-space projection for inpainting): the known
  pixels of each step's prediction of ``x_0`` are replaced by the input's before eq. 12
  moves on, ``x0_pred <- mask * x_0 + (1 - mask) * x0_pred``, so the state never has to be
  overwritten; with ``resample > 1`` it goes back up and down as RePaint does (DDNM+'s
  time travel), by default only at ``t < T / 2``.

Every method ends with the known pixels set to the input, so they come out equal to it.
Noise is per sample (a generator seeded ``seed + i`` for image ``i``). Model calls and
gradient passes are counted in the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ddim.checked_model import Callback, CheckedModel, Step
from ddim.guidance import guided
from ddim.names import (
    INPAINT_JUMP_LENGTH,
    INPAINT_METHODS,
    INPAINT_RESAMPLE,
    INPAINT_RESAMPLE_BELOW,
)
from ddim.noise import per_sample_randn, seeded_generators
from ddim.plan import StepPlan
from ddim.sampling import Model
from ddim.schedule import NoiseSchedule
from ddim.solvers.eq12 import check_eta, ddim_sigma, ddim_step

METHODS = INPAINT_METHODS
#: The methods that put the forward-noised known pixels into the state after every step,
#: and those that go back up and down ``resample`` times.
REPLACED = ("replace", "repaint")
RESAMPLED = ("repaint", "ddnm")


@dataclass(frozen=True)
class Inpainting:
    """The completed images and what they cost per batch: model calls and gradient passes."""

    images: torch.Tensor
    model_calls: int
    grad_passes: int


def repaint_moves(
    steps: int, jump_length: int = 1, resample: int = 1, start: int = 0
) -> list[tuple[str, int]]:
    """RePaint's walk over a plan of ``steps`` steps as ``("down", i)`` (step ``i``, from
    point ``i`` to ``i + 1``) and ``("up", i)`` (back from point ``i + 1`` to ``i``): after
    arriving at every ``jump_length``-th point before the last (and not before point
    ``start``), go up ``jump_length`` points and down again, ``resample - 1`` times.
    ``resample = 1`` is the plain walk."""
    if jump_length < 1 or resample < 1:
        raise ValueError(f"jump_length and resample must be >= 1, got {jump_length}, {resample}")
    moves: list[tuple[str, int]] = []
    for i in range(steps):
        moves.append(("down", i))
        arrived = i + 1
        if start <= arrived < steps and arrived % jump_length == 0 and arrived >= jump_length:
            for _ in range(resample - 1):
                moves += [("up", j) for j in range(arrived - 1, arrived - jump_length - 1, -1)]
                moves += [("down", j) for j in range(arrived - jump_length, arrived)]
    return moves


def inpaint_moves(
    plan: StepPlan,
    num_timesteps: int,
    method: str,
    jump_length: int = INPAINT_JUMP_LENGTH,
    resample: int = INPAINT_RESAMPLE,
    resample_below: float = INPAINT_RESAMPLE_BELOW,
) -> list[tuple[str, int]]:
    """The walk of :func:`inpaint` over ``plan``: :func:`repaint_moves`, resampling only for
    the methods in ``RESAMPLED`` and only after arriving at points with
    ``t < resample_below * num_timesteps``."""
    if not 0 < resample_below <= 1:
        raise ValueError(f"resample_below must be in (0, 1], got {resample_below}")
    limit = resample_below * num_timesteps
    start = next((i for i, t in enumerate(plan.ts) if t < limit), plan.steps)
    return repaint_moves(plan.steps, jump_length, resample if method in RESAMPLED else 1, start)


def walk_name(resample: int, jump_length: int, resample_below: float) -> str:
    """How tables name a walk after its method: ``, r = 15, jump 2, t < 0.5 T`` (each part
    only where it differs from the plain walk)."""
    return (
        (f", r = {resample}" if resample > 1 else "")
        + (f", jump {jump_length}" if jump_length > 1 else "")
        + (f", t < {resample_below:g} T" if resample_below < 1 else "")
    )


@torch.no_grad()
def inpaint(
    model: Model,
    x0: torch.Tensor,
    mask: torch.Tensor,
    sched: NoiseSchedule,
    *,
    steps: int = 20,
    spacing: str = "uniform",
    method: str = "ddnm",
    eta: float = 1.0,
    jump_length: int = INPAINT_JUMP_LENGTH,
    resample: int = INPAINT_RESAMPLE,
    resample_below: float = INPAINT_RESAMPLE_BELOW,
    dps_scale: float = 1.0,
    y: torch.Tensor | None = None,
    guidance: float | None = None,
    precision: str = "fp32",
    seed: int = 0,
    generators: list[torch.Generator] | None = None,
    callback: Callback | None = None,
) -> Inpainting:
    """Complete ``x0`` ``(B, C, H, W)`` where ``mask`` (broadcastable, 0 or 1) is 0.

    ``method``, ``jump_length``, ``resample`` and ``dps_scale`` are those of the module
    docstring; resampling happens only at ``t < resample_below * T`` (1: everywhere, as
    RePaint does). At high noise going back up does nothing to the law on an exact Gaussian
    oracle and lost labels on digits; at low noise it makes the fill agree with the known
    pixels. The defaults (DDNM, 15 resamplings over jumps of 2 steps below T / 2, 160 calls
    at 20 steps) kept the label of inpainted held-out digits most often (docs/RESULTS.md
    §4.1-4.2).
    ``steps``, ``spacing``, ``eta``, ``y``, ``guidance`` and ``precision`` are those of
    :func:`ddim.sample`. ``callback`` sees every step down (the repeated ones too) as a
    :class:`ddim.Step`, before the known pixels are put back.
    """
    if method not in METHODS:
        raise ValueError(
            f"unknown inpainting method {method!r}; choose one of {', '.join(METHODS)}"
        )
    mask = _check_mask(mask, x0)
    plan = StepPlan.build(sched, steps, spacing, "denoise")
    check_eta(plan, eta, "ddim")
    b = x0.shape[0]
    gens = generators if generators is not None else seeded_generators(seed, b, x0.device)

    def z() -> torch.Tensor:
        return per_sample_randn(gens, x0.shape[1:], dtype=x0.dtype, device=x0.device)

    def known(i: int, x: torch.Tensor) -> torch.Tensor:
        a = plan.a[i]
        noised = math.sqrt(a) * x0 + math.sqrt(1 - a) * z() if a < 1 else x0
        return torch.where(mask, noised, x)

    points = [t for t in plan.ts if t >= 0]
    net = CheckedModel(guided(model, sched, b, y=y, guidance=guidance), points, b, x0.device,
                       precision)  # fmt: skip
    if method == "dps":
        step = _dps_step(net, plan, x0, mask, dps_scale)
    else:
        step = _step(net, plan, *((x0, mask) if method == "ddnm" else ()))
    moves = inpaint_moves(plan, sched.num_timesteps, method, jump_length, resample, resample_below)
    x = z()
    calls = grads = 0
    for move, i in moves:
        if move == "up":
            ratio = plan.a[i] / plan.a[i + 1]
            x = math.sqrt(ratio) * x + math.sqrt(1 - ratio) * z()
            continue
        x, x0_pred, grad = step(i, x, ddim_sigma(plan.a[i], plan.a[i + 1], eta), z)
        calls, grads = calls + 1, grads + grad
        if callback is not None:
            callback(Step(i, plan.ts[i], x, x0_pred))
        if method in REPLACED or plan.a[i + 1] == 1:
            x = known(i + 1, x)
    net.raise_if_nonfinite()
    return Inpainting(x, calls, grads)


#: One step down from point ``i``: ``(x, z) -> (x_next, x0_pred, gradient passes)``.
StepDown = Callable[
    [int, torch.Tensor, float, Callable[[], torch.Tensor]], tuple[torch.Tensor, torch.Tensor, int]
]


def _step(
    net: CheckedModel,
    plan: StepPlan,
    x0: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> StepDown:
    """Eq. 12 from point ``i`` with noise std ``sigma``; given ``x0`` and ``mask``, with the
    known pixels of the prediction of ``x_0`` set to the input's (DDNM)."""

    def step(i: int, x: torch.Tensor, sigma: float, z: Callable[[], torch.Tensor]):
        eps = net(x, i, plan.ts[i])
        x0_pred = (x - plan.sigma[i] * eps) / plan.alpha[i]
        if mask is not None:
            x0_pred = torch.where(mask, x0, x0_pred)
        x = ddim_step(x0_pred, eps, plan.a[i + 1], sigma)
        return (x + sigma * z() if sigma > 0 else x), x0_pred, 0

    return step


def _dps_step(
    net: CheckedModel, plan: StepPlan, x0: torch.Tensor, mask: torch.Tensor, scale: float
) -> StepDown:
    """Eq. 12 moved along the normalised gradient of the known pixels' error (DPS)."""

    def step(i: int, x: torch.Tensor, sigma: float, z: Callable[[], torch.Tensor]):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            eps = net(x_in, i, plan.ts[i])
            x0_pred = (x_in - plan.sigma[i] * eps) / plan.alpha[i]
            err = ((x0_pred - x0) * mask).flatten(1).norm(dim=1)
            (grad,) = torch.autograd.grad(err.sum(), x_in)
        nxt = ddim_step(x0_pred.detach(), eps.detach(), plan.a[i + 1], sigma)
        nxt = nxt - scale * grad  # d|r|/dx = grad(|r|^2) / (2 |r|): DPS's normalised step
        return (nxt + sigma * z() if sigma > 0 else nxt), x0_pred.detach(), 1

    return step


def _check_mask(mask: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``mask`` as a bool tensor broadcast to ``x0``; a ValueError if it is not 0/1 or does
    not fit."""
    mask = torch.as_tensor(mask, device=x0.device)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("the mask must be binary: 1 (keep) or 0 (fill) at every pixel")
    try:
        return torch.broadcast_to(mask.bool(), x0.shape)
    except RuntimeError:
        raise ValueError(
            f"the mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(x0.shape)}"
        ) from None
