"""Sampling and deterministic encoding: one options value (:class:`SamplerOptions`, from
:mod:`ddim.sampler_options`), one step plan, one solver call.

:func:`sample` builds the :class:`~ddim.plan.StepPlan` of its options once, wraps the model
into the checked ``predict(i, x)`` every solver calls, and runs the chosen solver of
:mod:`ddim.solvers` over the plan: ``ddim`` is the paper's eq. 12 (any η, Table 1's σ̂),
the others its higher-order successors. :func:`invert` walks the same plan backwards with
the η = 0 step (eq. 13). :func:`model_calls` is what a run costs.

Schedule scalars are Python floats on the host, so a step launches device work only and
never waits on the device. Non-finite model outputs are flagged on the device and reported
once, after the loop (:class:`~ddim.checked_model.CheckedModel`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ddim.checked_model import CheckedModel, Model
from ddim.guidance import Classifier
from ddim.latent import CoupledLatent, start_of
from ddim.names import EXACT_SOLVERS
from ddim.noise import step_noise
from ddim.plan import (
    Callback,
    Noise,
    Prediction,
    Report,
    Step,
    StepPlan,
    Trajectory,
    data_prediction,
    noise_prediction,
)
from ddim.sampler_options import SamplerOptions
from ddim.schedule import NoiseSchedule
from ddim.solvers import solver_facts
from ddim.solvers.eq12 import ddim_step, predict_x0
from ddim.solvers.exact import bdia_inverse, edict_inverse

__all__ = ["Callback", "Model", "SamplerOptions", "Step", "Trajectory", "invert", "model_calls",
           "sample", "walk"]  # fmt: skip


@torch.no_grad()
def sample(
    model: Model,
    x_T: torch.Tensor | CoupledLatent,
    sched: NoiseSchedule,
    *,
    options: SamplerOptions | None = None,
    y: torch.Tensor | None = None,
    classifier: Classifier | None = None,
    seed: int | None = None,
    generators: Sequence[torch.Generator] | None = None,
    noise: torch.Tensor | None = None,
    return_trajectory: bool = False,
    return_state: bool = False,
    progress: bool = False,
    callback: Callback | None = None,
    **fields: Any,
) -> torch.Tensor | CoupledLatent | tuple[torch.Tensor | CoupledLatent, Trajectory]:
    """Sample from ``x_T`` down to ``x_0`` with DDIM's eq. 12 or another ``solver``.

    The run is ``options``, or its fields given one by one as keywords (``steps``,
    ``spacing``, ``eta``, ``variance``, ``clip_denoised``, ``precision``, ``solver``,
    ``final_step``, ``guidance``, ``classifier_scale``, ``edict_p``, ``bdia_gamma``: those of
    :class:`~ddim.sampler_options.SamplerOptions`, checked by it), not both.

    Args:
        model: any ``model(x_t, t) -> eps`` with ``t`` a LongTensor ``(B,)`` in ``0..T-1``
            (or a model whose ``config.prediction`` says it predicts ``v`` or ``x``).
        x_T: the starting noise, or an exact solver's latent
            (:class:`~ddim.latent.CoupledLatent`, from :func:`invert`); all math runs in
            its dtype and on its device.
        sched: the noise schedule the model was trained with.
        steps: a number of steps ``S`` or an explicit sequence of timesteps. ``None``: the
            model's own plan if it has one (a distilled student's ``config.sampling_plan``),
            else 50. Another plan for a student is allowed, with a warning that says so.
        spacing: how ``S`` steps are laid out (see :meth:`NoiseSchedule.timesteps`).
        eta: the ``eta`` of eq. 16 in ``[0, 1]``; 0 is DDIM, 1 is DDPM. A larger ``eta`` is
            accepted where eq. 12 stays defined at every step, else a ValueError names the
            step. Ignored by sigma-hat.
        variance: ``"ddim"`` (eq. 16) or ``"ddpm-large"`` (Table 1's sigma-hat).
        clip_denoised: clamp ``x0_pred`` to ``[-1, 1]`` at every step (the step then uses
            the ``eps`` that the clamped ``x0_pred`` implies). ``None`` follows the official
            code: off for ``"ddim"``, on for sigma-hat.
        precision: the model call's precision, ``fp32`` (no autocast), ``bf16``, ``fp16``
            or ``auto`` (:func:`ddim.precision.choose`); the sampler's arithmetic stays in
            the dtype of ``x_T``.
        solver: ``"ddim"`` (eq. 12, any ``eta``, sigma-hat) or one of the probability-flow
            solvers of :mod:`ddim.solvers`: ``dpmpp-2m``, ``dpmpp-3m``, ``unipc``, ``plms``,
            ``heun``, the stochastic ``dpmpp-2m-sde``, and the exactly invertible ``edict``
            (mixing weight ``edict_p``) and ``bdia`` (``bdia_gamma``). These take
            ``eta = 0`` and ``variance = "ddim"`` only; :func:`model_calls` says what a run
            costs.
        final_step: how a run ends (:mod:`ddim.plan`): ``"denoise"`` steps from the smallest
            timestep to ``alpha_bar = 1`` by returning the data prediction there (DDIM's
            last step); ``"trapezoid"`` takes that step by the trapezoidal rule in
            ``sigma / alpha``; ``"none"`` returns the state at the smallest timestep as it
            is, one model call cheaper. ``None``: ``"denoise"`` for ``ddim``, else
            :data:`~ddim.names.DEFAULT_FINAL_STEP` (``"trapezoid"``, chosen on the exact
            Gaussian oracle and FD-MNIST; see docs/results/solvers-oracle.md and
            docs/results/solvers-mnist.md).
        guidance: classifier-free guidance weight ``w`` for a class-conditional model
            (eq. 1 of :mod:`ddim.guidance`; both halves in one batched call of ``2B``).
        classifier_scale: the scale ``s`` of classifier guidance (eq. 2 there; default 1
            when a ``classifier`` is given).
        options: all of the above as one :class:`SamplerOptions`, instead of the separate
            arguments (give one or the other).
        y: a LongTensor ``(B,)`` of class labels, for a class-conditional model or a
            classifier; a conditional model without ``y`` samples unconditionally.
        classifier: a noise-aware classifier ``c(x_t, t) -> logits`` for classifier
            guidance.
        seed, generators, noise: the step noise ``z``, at most one of them: ``seed`` gives
            sample ``i`` a generator seeded ``seed + i``; ``generators`` one per sample (for
            example those ``x_T`` was drawn from); ``noise`` every ``z`` explicitly, shape
            ``(plan.stochastic_steps, *x_T.shape)``: one row per step of the plan that may
            draw noise (every distinct step but a last one to ``alpha_bar = 1``). With none,
            ``z`` comes from the global RNG.
        return_trajectory: also return every ``x_t`` and every ``x0_pred``.
        return_state: (``edict``, ``bdia``) return the sampler's whole end state, a
            :class:`~ddim.latent.CoupledLatent` whose ``first`` is ``x_0``, instead of
            ``x_0``: :func:`invert` from it retraces this run exactly, so an image
            translated under another class (DDIB) encodes back to its own latent.
        progress: show a tqdm bar.
        callback: called with a :class:`~ddim.plan.Step` after every step.

    Returns:
        ``x_0`` (or the end state), and the ``Trajectory`` with ``return_trajectory``.
    """
    own = own_plan(model)
    options = run_of(options, fields, own)
    start_of(x_T, options.solver)
    if return_state and options.solver not in EXACT_SOLVERS:
        raise ValueError(
            f"return_state is for the exact solvers ({', '.join(EXACT_SOLVERS)}), whose end "
            f"state is more than the image; {options.solver!r} ends with x_0 alone"
        )
    plan = options.plan(sched)
    if own is not None and tuple(t for t in plan.ts if t >= 0) != own:
        warnings.warn(
            f"this model was distilled for {len(own)} steps at t = {list(own)}; sampling "
            f"it with {plan.steps} steps at t = {[t for t in plan.ts if t >= 0]} instead",
            stacklevel=2,
        )
    z = step_noise(x_T, plan.stochastic_steps, seed, generators, noise, options.stochastic)
    traj = Trajectory([], [x_T], []) if return_trajectory else None
    bar = tqdm(total=plan.steps, disable=not progress, desc=f"sampling ({options.solver})")

    def report(i: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        bar.update()
        if traj is not None:
            traj.timesteps.append(plan.ts[i])
            traj.xs.append(x)
            traj.x0_preds.append(x0)
        if callback is not None:
            callback(Step(i, plan.ts[i], x, x0))
        return x

    with bar:
        x = walk(model, x_T, sched, options, plan, z, report, y=y, classifier=classifier,
                 keep_state=return_state)  # fmt: skip
    return (x, traj) if traj is not None else x


#: ``change(i, x, prediction) -> prediction``: a change of the prediction at point ``i``
#: (DDNM's projection of ``x0`` onto the known pixels, for one).
ChangePrediction = Callable[[int, torch.Tensor, Prediction], Prediction]


def walk(
    model: Model,
    x: torch.Tensor | CoupledLatent,
    sched: NoiseSchedule,
    options: SamplerOptions,
    plan: StepPlan,
    noise: Noise,
    report: Report,
    *,
    y: torch.Tensor | None = None,
    classifier: Classifier | None = None,
    change: ChangePrediction | None = None,
    with_grad: bool = False,
    keep_state: bool = False,
) -> torch.Tensor | CoupledLatent:
    """One solver walk over ``plan`` (all or part of ``options.plan(sched)``) from state
    ``x``, each prediction made by :func:`predictor`; the solver of ``options`` draws
    ``noise(i, x)`` and calls ``report`` after each step (which may change the state).
    Returns the end state's image, or with ``keep_state`` an exact solver's whole end state.
    Non-finite model outputs raise after the walk."""
    predict, checked = predictor(model, x, sched, options, plan, y=y, classifier=classifier,
                                 change=change, with_grad=with_grad)  # fmt: skip
    out = options.solver_function()(predict, x, plan, noise, report)
    checked.raise_if_nonfinite()
    return out.first if isinstance(out, CoupledLatent) and not keep_state else out


def predictor(
    model: Model,
    x: torch.Tensor | CoupledLatent,
    sched: NoiseSchedule,
    options: SamplerOptions,
    plan: StepPlan,
    *,
    y: torch.Tensor | None = None,
    classifier: Classifier | None = None,
    change: ChangePrediction | None = None,
    with_grad: bool = False,
) -> tuple[Callable[[int, torch.Tensor], Prediction], CheckedModel]:
    """The ``predict(i, x)`` of a run over ``plan`` for a batch like ``x``: the model read
    as an ε-model and conditioned as ``options`` say (:meth:`SamplerOptions.condition`),
    each call checked (:class:`CheckedModel`, returned too), its prediction clipped if
    ``options.clip`` and then changed by ``change``. With ``with_grad``, each prediction is
    made with the gradient enabled for ``change`` to take (DPS), from a copy of the state
    that requires it, and handed to the solver detached."""
    points = [t for t in plan.ts if t >= 0]
    net = options.condition(model, sched, x.shape[0], y, classifier)
    eps_model = CheckedModel(net, points, x.shape[0], x.device, options.precision)
    clip = options.clip

    def prediction(i: int, x: torch.Tensor) -> Prediction:
        eps = eps_model(x, i, plan.ts[i])
        x0 = data_prediction(x, eps, plan.alpha[i], plan.sigma[i])
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = noise_prediction(x, x0, plan.alpha[i], plan.sigma[i])
        pred = Prediction(eps, x0)
        return pred if change is None else change(i, x, pred)

    def predict(i: int, x: torch.Tensor) -> Prediction:
        if not with_grad:
            return prediction(i, x)
        with torch.enable_grad():
            pred = prediction(i, x.detach().requires_grad_(True))
        return Prediction(pred.eps.detach(), pred.x0.detach())

    return predict, eps_model


def run_of(
    options: SamplerOptions | None, fields: dict[str, Any], own: tuple[int, ...] | None = None
) -> SamplerOptions:
    """``options``, or the :class:`SamplerOptions` of ``fields`` given one by one (with
    ``steps``, when not given, the model's ``own`` plan or 50), never both."""
    if options is not None:
        if fields:
            raise ValueError(
                "give the sampler's options either as options= or one by one, not both"
            )
        return options
    if fields.get("steps") is None:
        fields = {**fields, "steps": own or 50}
    return SamplerOptions(**fields)


def own_plan(model: object) -> tuple[int, ...] | None:
    """The timesteps a distilled student samples with (its ``config.sampling_plan``), else
    ``None``."""
    plan = getattr(getattr(model, "config", None), "sampling_plan", None)
    return None if plan is None else tuple(plan)


def model_calls(
    sched: NoiseSchedule,
    steps: int | Sequence[int] = 50,
    spacing: str = "uniform",
    solver: str = "ddim",
    final_step: str | None = None,
) -> int:
    """The model evaluations one :func:`sample` run makes with these options (one batch):
    one per step of the plan (zero-length steps are not in it), plus Heun's second call on
    every step that does not end at ``alpha_bar = 1`` and PLMS's extra call on its first.
    Guidance adds no call: CFG's halves share one call of 2B rows (a classifier adds a
    forward and backward pass of its own per call)."""
    options = SamplerOptions(steps=steps, spacing=spacing, solver=solver, final_step=final_step)
    return solver_facts(solver).calls(options.plan(sched))


@torch.no_grad()
def invert(
    model: Model,
    x0: torch.Tensor | CoupledLatent,
    sched: NoiseSchedule,
    *,
    options: SamplerOptions | None = None,
    y: torch.Tensor | None = None,
    classifier: Classifier | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    **fields: Any,
) -> torch.Tensor | CoupledLatent:
    """Deterministic encoding ``x_0 -> x_T``: DDIM's ``eta = 0`` step run upwards (eq. 13),
    or, for the exact solvers ``edict`` and ``bdia``, their steps solved backwards in closed
    form, which returns their whole state (:class:`~ddim.latent.CoupledLatent`) and is
    undone by :func:`sample` with the same options to rounding.

    The run is ``options`` or its fields as keywords, as for :func:`sample` (``steps``,
    ``spacing``, ``precision``, ``guidance``, ``classifier_scale``, ``solver``, ...). DDIM's
    encoding walks the plan of :func:`sample` (``final_step="denoise"``) backwards, querying
    the model at ``(x_{t_prev}, t)``, the timestep of the sampling step it undoes; the step
    is eq. 9 at ``a_prev`` followed by eq. 12 (``sigma = 0``) towards ``a_t``, the
    :func:`~ddim.solvers.eq12.ddim_step` that sampling takes. ``callback`` gets a
    :class:`~ddim.plan.Step` after every DDIM step (``i`` counts encoding steps);
    ``y``, ``classifier`` are those of :func:`sample` (encoding under a class). With
    ``fixed_point = K``, each DDIM step is refined by K extra model calls that solve the
    sampling step's implicit equation for its input (Step's ``residual`` reports how far
    the last iterate was from solving it), so decoding retraces the encoding more closely
    wherever the iteration converges (:func:`_fixed_point`). An exact
    solver's end state (``sample(..., return_state=True)``) may stand for ``x0``: its
    encoding then retraces that run exactly.
    """
    options = run_of(options, fields)
    if options.solver not in ("ddim", *EXACT_SOLVERS):
        raise ValueError(
            f"encoding is DDIM's or an exact solver's (edict, bdia), not {options.solver!r}'s"
        )
    start_of(x0, options.solver)
    if options.solver in EXACT_SOLVERS:
        plan = options.plan(sched)
        predict, checked = predictor(model, x0, sched, options, plan, y=y, classifier=classifier)
        if options.solver == "edict":
            latent = edict_inverse(predict, x0, plan, p=options.edict_p)
        else:
            latent = bdia_inverse(predict, x0, plan, gamma=options.bdia_gamma)
        checked.raise_if_nonfinite()
        return latent
    model = options.condition(model, sched, x0.shape[0], y, classifier)
    plan = StepPlan.build(sched, options.steps, options.spacing, "denoise")
    upwards = range(plan.steps - 1, -1, -1)  # the plan's steps, smallest t first
    eps_model = CheckedModel(
        model, [plan.ts[i] for i in upwards], x0.shape[0], x0.device, options.precision
    )
    x = x0
    for k, i in enumerate(tqdm(upwards, disable=not progress, desc="encoding")):
        eps = eps_model(x, k, plan.ts[i])
        x0_pred = predict_x0(x, eps, plan.a[i + 1])
        x_t = ddim_step(x0_pred, eps, plan.a[i], 0.0)
        residual = None
        if options.fixed_point:
            x_t, residual = _fixed_point(eps_model, k, plan, i, x, x_t, options.fixed_point)
        x = x_t
        if callback is not None:
            callback(Step(k, plan.ts[i], x, x0_pred, residual))
    eps_model.raise_if_nonfinite()
    return x


def _fixed_point(
    eps_model: CheckedModel,
    k: int,
    plan: StepPlan,
    i: int,
    x_prev: torch.Tensor,
    x_t: torch.Tensor,
    iterations: int,
) -> tuple[torch.Tensor, float]:
    """Solve DDIM's sampling step ``x_prev = r x_t + c eps(x_t, t)`` (eq. 12 at η = 0 from
    ``a_t = plan.a[i]`` to ``a_prev = plan.a[i + 1]``: ``r = sqrt(a_prev / a_t)``,
    ``c = sqrt(1 - a_prev) - r sqrt(1 - a_t)``) for ``x_t`` by ``iterations`` rounds of
    ``x_t <- (x_prev - c eps(x_t, t)) / r`` from the approximate inversion's ``x_t``; also
    the largest residual ``|r x_t + c eps(x_t, t) - x_prev|`` of the last iterate whose
    ``eps`` was computed (the one before the returned ``x_t``)."""
    a_t, a_prev = plan.a[i], plan.a[i + 1]
    r = math.sqrt(a_prev / a_t)
    c = math.sqrt(1 - a_prev) - r * math.sqrt(1 - a_t)
    residual = math.inf
    for _ in range(iterations):
        eps = eps_model(x_t, k, plan.ts[i])
        residual = (r * x_t + c * eps - x_prev).abs().max().item()
        x_t = (x_prev - c * eps) / r
    return x_t, residual
