"""One definition of a sampling run: :class:`SamplerOptions`, each field declared once.

Every field carries its :class:`Declared` facts (help, choices, range, what ``None`` means)
in its dataclass metadata. :class:`SamplerOptions` checks them when it is built, the
command line makes its options from them (:mod:`ddim.cli.run_options`) and ``ddim serve``
checks its requests with them (:mod:`ddim.serve.requests`), so the three cannot drift.
The rules that tie fields together (η only for the ``ddim`` solver, enough steps for a
solver, η that keeps eq. 12 defined) are checked here too, or when the plan is built.

This module imports no torch: ``ddim --help`` reads it. The methods that need torch
(:meth:`SamplerOptions.plan`, :meth:`~SamplerOptions.condition`, ...) import it when called.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ddim.names import (
    BDIA_GAMMA,
    DEFAULT_FINAL_STEP,
    EDICT_MAX_EXPANSION,
    EDICT_P,
    EDICT_PAPER_STEPS,
    EXACT_SOLVERS,
    FINAL_STEPS,
    PRECISIONS,
    SIGMA_HAT,
    SOLVERS,
    SPACINGS,
    VARIANCES,
)

#: The solvers whose last step is DDIM's (``final_step`` "denoise" by default).
DDIM_LAST_STEP = ("ddim", *EXACT_SOLVERS)

if TYPE_CHECKING:
    import torch

    from ddim.guidance import Classifier
    from ddim.latent import CoupledLatent
    from ddim.plan import StepPlan
    from ddim.sampling import Model, Trajectory
    from ddim.schedule import NoiseSchedule
    from ddim.solvers import Solver


@dataclass(frozen=True)
class Declared:
    """What one option is: ``help`` text; ``choices`` (a name) or a numeric range
    ``[low, high]`` (``low_open``: ``low`` itself excluded); ``integer`` for a count;
    ``when_none``, what leaving an optional field at ``None`` means (shown as its default
    in ``--help``)."""

    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = False
    when_none: str | None = None

    def check(self, name: str, value: Any) -> None:
        """A one-line ValueError naming ``name`` unless ``value`` fits this declaration
        (``None`` always fits an optional field; a sequence of timesteps fits ``steps``)."""
        if value is None or (name == "steps" and isinstance(value, Sequence)):
            return
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(
                    f"unknown {name} {value!r}; choose one of {', '.join(self.choices)}"
                )
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if self.low is None and isinstance(value, bool):
                return  # a flag
            raise ValueError(f"{name} must be a number, got {value!r}")
        if self.integer and not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        too_low = self.low is not None and (
            value < self.low or (self.low_open and value == self.low)
        )
        if not math.isfinite(value) or too_low or (self.high is not None and value > self.high):
            raise ValueError(f"{name} must be {self.describe_range()}, got {value}")

    def describe_range(self) -> str:
        """``a finite number >= 0``, ``a whole number in 1..1000``, ...: the words of an
        error."""
        kind = "a whole number" if self.integer else "a finite number"
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high is None else f"<= {self.high:g}"
        return " ".join(filter(None, [kind, low, "and" if low and high else "", high]))


def declared(default: Any, **facts: Any) -> Any:
    """A dataclass field with ``default`` and its :class:`Declared` facts."""
    return field(default=default, metadata={"declared": Declared(**facts)})


@dataclass(frozen=True, kw_only=True)
class SamplerOptions:
    """How to sample: the options of :func:`ddim.sample` that define its result, as one
    value that the batched workflows, the command line and the web page pass around.

    ``steps`` (a count ``S`` or explicit timesteps) and ``spacing`` lay out the plan;
    ``solver`` and ``final_step`` say how it is walked; ``eta`` and ``variance`` apply to
    the ``ddim`` solver (eq. 12) only; ``clip_denoised=None`` clips for σ̂ only, as the
    official code does; ``precision`` is the model call's; ``guidance`` (classifier-free)
    and ``classifier_scale`` steer a class-conditional run (:mod:`ddim.guidance`). Each
    field's help, range and choices are in its metadata (:func:`declared_fields`).
    """

    steps: int | Sequence[int] = declared(
        50, low=1, integer=True, help="number of sampling steps S (at most the model's T)"
    )
    spacing: str = declared(
        "uniform", choices=SPACINGS, help="how the S timesteps are laid out in 0..T-1"
    )
    eta: float = declared(
        0.0, low=0.0, help="eta of eq. 16: 0 is DDIM (deterministic), 1 is DDPM (ddim only)"
    )
    variance: str = declared(
        "ddim",
        choices=VARIANCES,
        help="ddim: sigma from --eta; ddpm-large: Table 1's sigma-hat row (ignores --eta)",
    )
    clip_denoised: bool | None = declared(
        None,
        help="clamp the predicted x0 to [-1, 1] at every step",
        when_none="off for ddim, on for ddpm-large",
    )
    precision: str = declared(
        "fp32",
        choices=PRECISIONS,
        help="the model call's precision; auto: bf16 on GPUs and on CPUs with native bf16, "
        "else fp32",
    )
    solver: str = declared(
        "ddim",
        choices=SOLVERS,
        help="ddim: eq. 12 (any eta); the others solve the same ODE at higher order "
        "(dpmpp-2m-sde is stochastic)",
    )
    final_step: str | None = declared(
        None,
        choices=FINAL_STEPS,
        help="how a solver takes the last step to t = 0",
        when_none=f"denoise for ddim, {DEFAULT_FINAL_STEP} for the others",
    )
    guidance: float | None = declared(
        None,
        low=0.0,
        help="classifier-free guidance weight w (1: conditional, 0: unconditional, >1: stronger)",
        when_none="none: the class's conditional model",
    )
    classifier_scale: float | None = declared(
        None, low=0.0, help="classifier guidance with a noise-aware classifier at this scale"
    )
    edict_p: float | None = declared(
        None, low=0.0, low_open=True, high=1.0,
        help="EDICT's mixing weight p; encoding refuses a p whose inverse would expand "
        f"x - y by more than {EDICT_MAX_EXPANSION:.0e} over the plan (p^(-2S))",
        when_none=f"{EDICT_P} (Wallace et al.) up to {EDICT_PAPER_STEPS} steps, then "
        f"{EDICT_P}^({EDICT_PAPER_STEPS}/S), the paper's expansion",
    )  # fmt: skip
    bdia_gamma: float = declared(
        BDIA_GAMMA, low=0.0, low_open=True, high=1.0,
        help="BDIA's gamma (1: the symmetric two-step form)",
    )  # fmt: skip
    fixed_point: int = declared(
        0, low=0, high=100, integer=True,
        help="DDIM encoding: extra model calls a step that solve the step's implicit "
        "equation by fixed-point iteration (0: the usual approximate inversion)",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name, facts in declared_fields().items():
            if name != "steps":  # checked against the model's T when the plan is built
                facts.check(name, getattr(self, name))
        if self.solver != "ddim":
            if self.eta != 0:
                hint = "; dpmpp-2m-sde is the stochastic multistep solver"
                hint = "" if self.solver == "dpmpp-2m-sde" else hint
                raise ValueError(f"eta applies to solver 'ddim' only, not {self.solver!r}{hint}")
            if self.variance != "ddim":
                raise ValueError(
                    f"variance {self.variance!r} applies to solver 'ddim' only, not {self.solver!r}"
                )
        elif self.eta != 0 and self.final_step not in (None, "denoise"):
            raise ValueError(f"eta needs final_step 'denoise' (eq. 12), not {self.final_step!r}")
        if self.solver in EXACT_SOLVERS and self.final_step not in (None, "denoise"):
            raise ValueError(
                f"solver {self.solver!r} ends with DDIM's step to the data: final_step "
                f"'denoise', not {self.final_step!r}"
            )
        if self.fixed_point and self.solver != "ddim":
            raise ValueError(
                f"fixed_point applies to DDIM's encoding (solver 'ddim'); {self.solver!r} "
                f"encodes {'exactly' if self.solver in EXACT_SOLVERS else 'not at all'}"
            )
        for name, owner, default in (("edict_p", "edict", None),
                                     ("bdia_gamma", "bdia", BDIA_GAMMA)):  # fmt: skip
            if getattr(self, name) != default and self.solver != owner:
                raise ValueError(f"{name} applies to solver {owner!r} only, not {self.solver!r}")

    @property
    def clip(self) -> bool:
        """Whether each ``x0`` prediction is clamped to ``[-1, 1]``."""
        return self.variance == SIGMA_HAT if self.clip_denoised is None else self.clip_denoised

    @property
    def stochastic(self) -> bool:
        """Whether a run draws step noise."""
        from ddim.solvers import solver_facts

        return solver_facts(self.solver).draws_noise(self.eta, self.variance)

    def plan(self, sched: NoiseSchedule) -> StepPlan:
        """The step plan of a run on ``sched``, checked: enough steps for the solver, and an
        ``eta`` that keeps eq. 12 defined at every step."""
        from ddim.plan import StepPlan
        from ddim.solvers import solver_facts
        from ddim.solvers.eq12 import check_eta

        final_step = self.final_step
        if final_step is None:
            final_step = "denoise" if self.solver in DDIM_LAST_STEP else DEFAULT_FINAL_STEP
        plan = StepPlan.build(sched, self.steps, self.spacing, final_step)
        need = solver_facts(self.solver).min_steps
        if plan.steps < need:
            given = self.steps if isinstance(self.steps, int) else len(self.steps)
            raise ValueError(
                f"solver {self.solver!r} needs at least {need} steps; this run has "
                f"{plan.steps} (steps={given}, final_step={final_step!r})"
            )
        if self.solver == "ddim":
            check_eta(plan, self.eta, self.variance)
        return plan

    def check_inverts_encoding(self, what: str) -> None:
        """A ValueError unless sampling with these options undoes :func:`ddim.invert`, as
        ``what`` (a reconstruction, a translation) needs: an exact solver (``edict``,
        ``bdia``), or the ``ddim`` solver at ``eta = 0`` with the ``ddim`` variance and the
        denoising final step."""
        if self.solver in EXACT_SOLVERS:
            return
        if self.solver != "ddim" or self.final_step not in (None, "denoise"):
            raise ValueError(
                f"{what} encodes with DDIM, so it must decode with DDIM too: solver 'ddim' "
                f"with final_step 'denoise' (or an exact solver: edict, bdia), not solver "
                f"{self.solver!r} with final_step {self.final_step!r}"
            )
        if self.eta != 0 or self.variance != "ddim":
            raise ValueError(f"{what} decodes with DDIM: eta must be 0 and variance 'ddim'")

    def condition(
        self,
        model: Model,
        sched: NoiseSchedule,
        batch: int,
        y: torch.Tensor | None,
        classifier: Classifier | None,
    ) -> Model:
        """``model``, read as an ε-model (:func:`ddim.parameterization.as_eps_model`), with
        labels ``y`` under this run's guidance (:func:`ddim.guidance.guided`)."""
        from ddim.guidance import guided
        from ddim.parameterization import as_eps_model

        return guided(
            as_eps_model(model, sched), sched, batch, y=y, guidance=self.guidance,
            classifier=classifier, classifier_scale=self.classifier_scale,
        )  # fmt: skip

    def solver_function(self) -> Solver:
        """The solver of :mod:`ddim.solvers` these options run, ``eta`` and ``variance``
        bound for ``ddim``."""
        import functools

        from ddim.solvers import solver_facts

        function = solver_facts(self.solver).function
        if self.solver == "ddim":
            return functools.partial(function, eta=self.eta, variance=self.variance)
        if self.solver == "edict":
            return functools.partial(function, p=self.edict_p)
        if self.solver == "bdia":
            return functools.partial(function, gamma=self.bdia_gamma)
        return function

    def sample(
        self, model: Model, x_T: torch.Tensor, sched: NoiseSchedule, **kwargs: object
    ) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
        """:func:`ddim.sample` with these options; ``kwargs`` are its other arguments."""
        from ddim.sampling import sample

        return sample(model, x_T, sched, options=self, **kwargs)  # type: ignore[arg-type]

    def invert(
        self, model: Model, x0: torch.Tensor, sched: NoiseSchedule, **kwargs: object
    ) -> torch.Tensor | CoupledLatent:
        """:func:`ddim.invert` with these options; ``kwargs`` are its other arguments."""
        from ddim.sampling import invert

        return invert(model, x0, sched, options=self, **kwargs)  # type: ignore[arg-type]


def declared_fields() -> dict[str, Declared]:
    """Every field of :class:`SamplerOptions` with its declaration, in field order."""
    return {f.name: f.metadata["declared"] for f in dataclasses.fields(SamplerOptions)}


def default_of(name: str) -> Any:
    """The library's default of field ``name``."""
    (found,) = [f for f in dataclasses.fields(SamplerOptions) if f.name == name]
    return found.default


#: The library's defaults, as one value (a default argument of the batched workflows).
DEFAULTS = SamplerOptions()
