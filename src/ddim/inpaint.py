"""Inpainting with a DDIM model: fill the pixels where ``mask = 0``, keep those where ``mask = 1``.

Every method is a change of the same step plan that :func:`ddim.sample` walks, so every
solver, η, and classifier-free or classifier guidance reach it (:func:`ddim.sampling.walk`):

- ``replace`` (the replacement method; Song et al. 2021, App. I.2) changes the state: after
  every step to a point with ``a = alpha_bar``, the known region is replaced by the
  forward-noised original ``sqrt(a) x_0 + sqrt(1 - a) z`` (fresh ``z``);
- ``repaint`` (Lugmayr et al. 2022) changes the walk: ``replace``, and after coming down to
  a level, go back up ``jump_length`` levels with the forward process
  ``x_up = sqrt(a_up / a) x + sqrt(1 - a_up / a) z`` and come down again, ``resample - 1``
  times, so the unknown region can agree with the known one;
- ``dps`` (Chung et al. 2023) changes the state by a gradient taken through the model call:
  each step is moved along ``-zeta * grad_x |mask * (x0_pred - x_0)|`` at its start point;
- ``ddnm`` (Wang, Yu & Zhang 2023, the null-space projection for inpainting, as their code
  takes it) rectifies each prediction of ``x_0``, ``x0_pred <- mask * x_0 + (1 - mask) *
  x0_pred``, and keeps the model's ``eps``: eq. 12's step with that pair is the plain step
  moved by ``alpha_next * mask * (x_0 - x0_pred)``, a change of the state after the step
  that every solver can take (the pair is not consistent, so it cannot be a change of the
  prediction: with the ``eps`` the rectified ``x0_pred`` implies, the exact oracle's W2²
  doubles, docs/results/inpainting-oracle.md); with ``resample > 1`` it goes back up and down as
  RePaint does (DDNM+'s time travel), by default only at ``t < T / 2``.

A walk down a stretch of the plan is one solver run over that part of it, so a multistep
solver starts its history again after each trip back up. Every method ends with the known
pixels set to the input, so they come out equal to it. Noise is per sample (a generator
seeded ``seed + i`` for image ``i``). Model calls and gradient passes are counted in the
result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ddim.guidance import Classifier
from ddim.names import (
    INPAINT_JUMP_LENGTH,
    INPAINT_METHOD,
    INPAINT_METHODS,
    INPAINT_RESAMPLE,
    INPAINT_RESAMPLE_BELOW,
    INPAINT_STEPS,
)
from ddim.noise import per_sample_randn, seeded_generators
from ddim.plan import Callback, Prediction, Step, StepPlan
from ddim.sampling import Model, SamplerOptions, walk
from ddim.schedule import NoiseSchedule

METHODS = INPAINT_METHODS
#: The methods that put the forward-noised known pixels into the state after every step,
#: and those that go back up and down ``resample`` times.
REPLACED = ("replace", "repaint")
RESAMPLED = ("repaint", "ddnm")
#: Inpainting's eta where no options are given: for DDIM's eq. 12, RePaint's ancestral step.
DEFAULT_ETA = 1.0


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
    options: SamplerOptions | None = None,
    method: str = INPAINT_METHOD,
    jump_length: int = INPAINT_JUMP_LENGTH,
    resample: int = INPAINT_RESAMPLE,
    resample_below: float = INPAINT_RESAMPLE_BELOW,
    dps_scale: float = 1.0,
    y: torch.Tensor | None = None,
    classifier: Classifier | None = None,
    seed: int = 0,
    generators: list[torch.Generator] | None = None,
    callback: Callback | None = None,
    **fields: Any,
) -> Inpainting:
    """Complete ``x0`` ``(B, C, H, W)`` where ``mask`` (broadcastable, 0 or 1) is 0.

    ``method``, ``jump_length``, ``resample`` and ``dps_scale`` are those of the module
    docstring; resampling happens only at ``t < resample_below * T`` (1: everywhere, as
    RePaint does). At high noise going back up does nothing to the law on an exact Gaussian
    oracle and lost labels on digits; at low noise it makes the fill agree with the known
    pixels. The defaults (DDNM, 15 resamplings over jumps of 2 steps below T / 2, 160 calls
    at 20 steps) kept the label of inpainted held-out digits most often
    (docs/results/inpainting-oracle.md, docs/results/inpainting-digits.md).

    The run is ``options`` (a :class:`~ddim.sampling.SamplerOptions`), or its fields given
    one by one (``steps``, ``spacing``, ``solver``, ``eta``, ``guidance``, ``precision``,
    ...; by default 20 steps, and ``eta = 1`` for the ``ddim`` solver). ``y``,
    ``classifier`` (with ``classifier_scale``) are those of :func:`ddim.sample`.
    ``callback`` sees every step down (the repeated ones too) as a :class:`ddim.Step`,
    before the known pixels are put back (with DDNM's rectified prediction of ``x_0``).
    """
    if method not in METHODS:
        raise ValueError(
            f"unknown inpainting method {method!r}; choose one of {', '.join(METHODS)}"
        )
    options = _options(options, fields)
    mask = _check_mask(mask, x0)
    plan = options.plan(sched)
    gens = generators if generators is not None else seeded_generators(seed, x0.shape[0],
                                                                        x0.device)  # fmt: skip

    def z(*_: object) -> torch.Tensor:
        return per_sample_randn(gens, x0.shape[1:], dtype=x0.dtype, device=x0.device)

    def known(i: int, x: torch.Tensor) -> torch.Tensor:
        noised = sched.q_sample(x0, plan.ts[i], z()) if plan.a[i] < 1 else x0
        return torch.where(mask, noised, x)

    change = _Change(method, plan, x0, mask, dps_scale)
    moves = inpaint_moves(plan, sched.num_timesteps, method, jump_length, resample, resample_below)
    x = z()
    for start, stop in _stretches(moves):
        if start > stop:  # back up from point start to point stop
            for i in range(start - 1, stop - 1, -1):
                x = sched.q_renoise(x, plan.ts[i + 1], plan.ts[i], z())
            continue

        def report(k: int, x: torch.Tensor, x0_pred: torch.Tensor, start: int = start):
            i = start + k
            x = change.after_step(i, x, x0_pred)
            if callback is not None:
                callback(Step(i, plan.ts[i], x, change.shown(x0_pred)))
            return known(i + 1, x) if method in REPLACED or plan.a[i + 1] == 1 else x

        part = plan.part(start, stop)
        x = walk(model, x, sched, options, part, z, report, y=y, classifier=classifier,
                 change=change.at(start), with_grad=method == "dps")  # fmt: skip
    return Inpainting(torch.where(mask, x0, x), change.calls, change.grads)


def _options(options: SamplerOptions | None, fields: dict[str, Any]) -> SamplerOptions:
    """``options``, or the fields given one by one over inpainting's defaults."""
    if options is not None:
        if fields:
            raise ValueError(
                "give the sampler's options either as options= or one by one, not both"
            )
        return options
    defaults: dict[str, Any] = {"steps": INPAINT_STEPS}
    if fields.get("solver", "ddim") == "ddim":
        defaults["eta"] = DEFAULT_ETA
    return SamplerOptions(**{**defaults, **fields})


def _stretches(moves: list[tuple[str, int]]) -> Iterator[tuple[int, int]]:
    """The walk as stretches between points: ``(a, b)`` with ``a < b`` goes down from point
    ``a`` to point ``b``, with ``a > b`` back up."""
    run: list[tuple[str, int]] = []
    for move in moves:
        if run and run[-1][0] != move[0]:
            yield _stretch(run)
            run = []
        run.append(move)
    if run:
        yield _stretch(run)


def _stretch(run: list[tuple[str, int]]) -> tuple[int, int]:
    kind, first = run[0]
    last = run[-1][1]
    return (first, last + 1) if kind == "down" else (first + 1, last)


class _Change:
    """The changes of one inpainting run: DDNM's prediction, DPS's gradient step after each
    step (its gradient taken at the step's first model call), and the counts of both."""

    def __init__(
        self, method: str, plan: StepPlan, x0: torch.Tensor, mask: torch.Tensor, scale: float
    ) -> None:
        self.method, self.plan, self.x0, self.mask, self.scale = method, plan, x0, mask, scale
        self.calls = self.grads = 0
        self.gradient: dict[int, torch.Tensor] = {}

    def at(self, start: int):
        """The change of the prediction for a part of the plan starting at point ``start``."""

        def change(k: int, x: torch.Tensor, pred: Prediction) -> Prediction:
            i = start + k
            self.calls += 1
            if self.method == "dps":  # a later call at point i (Heun's trial) is overridden
                err = ((pred.x0 - self.x0) * self.mask).flatten(1).norm(dim=1)
                (self.gradient[i],) = torch.autograd.grad(err.sum(), x)
                self.grads += 1
            return pred

        return change

    def after_step(self, i: int, x: torch.Tensor, x0_pred: torch.Tensor) -> torch.Tensor:
        """The state after step ``i`` (which predicted ``x0_pred``), changed by the method:
        DDNM puts the known pixels of the prediction onto the input's,
        ``x + alpha_next * mask * (x_0 - x0_pred)``; DPS moves along the normalised gradient
        of the known pixels' error taken at the start of the step (``d|r|/dx``)."""
        if self.method == "ddnm":
            return x + self.plan.alpha[i + 1] * torch.where(self.mask, self.x0 - x0_pred, 0.0)
        if self.method == "dps":
            return x - self.scale * self.gradient.pop(i)
        return x

    def shown(self, x0_pred: torch.Tensor) -> torch.Tensor:
        """The prediction of ``x_0`` a step was taken with, as DDNM rectifies it."""
        return torch.where(self.mask, self.x0, x0_pred) if self.method == "ddnm" else x0_pred


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
