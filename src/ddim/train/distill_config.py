"""The typed configuration of a progressive distillation run (``ddim distill CONFIG``).

A config file has four top-level keys::

    out_dir: runs/mnist-distill   # one folder per round below it
    distill: {...}                # DistillSection fields: the teacher and the rounds
    data: {...}                   # DataConfig fields: the images the student sees
    training: {...}               # TrainingConfig fields, per round (total_steps a round)

The student's network is the teacher's (its ``model_config``), so there is no ``model``
section; an optional ``diffusion`` section states the schedule the teacher must have. Of
the training fields, the optimisation (``total_steps`` per round, ``batch_size``, ``lr``,
Adam's, ``warmup_steps``, ``cooldown_steps``, ``grad_clip``, ``ema_decay``), ``seed``,
``label_dropout`` (a conditional teacher), the checkpoint and log cadence, ``device``,
``precision`` (the student's forward pass; the teacher runs in fp32, since eq. (1) of
:mod:`ddim.train.progressive` divides its result by a small number) and ``channels_last``
apply; the others (``init``, ``null_teacher``, ``loss_weighting``) must stay unset.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ddim.formats.config_file import build_section
from ddim.formats.datasets import DataConfig
from ddim.names import (
    DISTILL_SPACINGS,
    DISTILL_TEACHER_SOLVERS,
    DISTILL_WEIGHTINGS,
    PREDICTIONS,
)
from ddim.schedule import DiffusionConfig
from ddim.train.config import TrainingConfig, read_sections


@dataclass(frozen=True)
class DistillSection:
    """The teacher and the rounds: ``teacher`` is a checkpoint path or bundled name whose
    DDIM plan of ``teacher_steps`` steps (laid out by ``teacher_spacing``: ``trailing`` or
    ``linspace``, both from the top timestep) the first student halves; each round halves
    again until the student takes ``student_steps``.

    ``prediction`` is what every student predicts: ``eps``, ``v`` or ``x``. A student
    starts from its teacher's weights, so it starts *as* its teacher only when both predict
    the same thing: a v-student of an ε-teacher must first learn another output, and
    near ``t = T`` its targets are the ε-teacher's ``x0 = (z - sigma eps) / alpha``
    (``alpha ~ 0.006``), whose ε errors are amplified 160-fold. ``weighting`` is the loss
    weight on the data error (:func:`ddim.train.progressive.loss_weight`); ``auto`` is
    ``snr`` (the ε-loss) for an ε-student and ``truncated-snr`` for v and x; ``landing``
    weighs each student step by how far its data error moves where the step lands.

    ``teacher_solver`` is how the first teacher walks its plan (a deterministic solver of
    :data:`ddim.names.DISTILL_TEACHER_SOLVERS`; later teachers are students and take DDIM
    steps); ``hops`` is how many of its teacher's steps a student step spans (2: Salimans &
    Ho's halving); ``init``, a checkpoint with the teacher's network, is where the first
    student starts instead of the teacher's weights (a student of an earlier run, to
    distil again from a better teacher)."""

    teacher: str
    teacher_steps: int = 64
    student_steps: int = 1
    prediction: str = "v"
    weighting: str = "auto"
    teacher_solver: str = "ddim"
    teacher_spacing: str = "trailing"
    hops: int = 2
    init: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ValueError(
                f"distill.teacher must be a checkpoint path or name, got {self.teacher!r}"
            )
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"distill.prediction must be one of {', '.join(PREDICTIONS)}, "
                f"got {self.prediction!r}"
            )
        if self.weighting not in ("auto", *DISTILL_WEIGHTINGS):
            raise ValueError(
                f"distill.weighting must be one of auto, {', '.join(DISTILL_WEIGHTINGS)}, "
                f"got {self.weighting!r}"
            )
        for name in ("teacher_steps", "student_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"distill.{name} must be >= 1, got {getattr(self, name)}")
        if self.teacher_solver not in DISTILL_TEACHER_SOLVERS:
            raise ValueError(
                f"distill.teacher_solver must be one of {', '.join(DISTILL_TEACHER_SOLVERS)}, "
                f"got {self.teacher_solver!r}"
            )
        if self.teacher_spacing not in DISTILL_SPACINGS:
            raise ValueError(
                f"distill.teacher_spacing must be one of {', '.join(DISTILL_SPACINGS)} (plans "
                f"that start at the top timestep), got {self.teacher_spacing!r}"
            )
        if self.hops < 2:
            raise ValueError(f"distill.hops must be >= 2, got {self.hops}")
        if self.init is not None and (not isinstance(self.init, str) or not self.init):
            raise ValueError(f"distill.init must be a checkpoint path or name, got {self.init!r}")

    @property
    def loss_weighting(self) -> str:
        """``weighting`` with ``auto`` resolved by the students' prediction."""
        if self.weighting != "auto":
            return self.weighting
        return "snr" if self.prediction == "eps" else "truncated-snr"


@dataclass(frozen=True)
class DistillConfig:
    """A whole distillation run (module docstring)."""

    distill: DistillSection
    data: DataConfig
    training: TrainingConfig = field(default_factory=TrainingConfig)
    diffusion: DiffusionConfig | None = None
    out_dir: str = "runs/distill"

    def __post_init__(self) -> None:
        tc = self.training
        unused = [k for k in ("init", "null_teacher") if getattr(tc, k) is not None]
        unused += ["loss_weighting"] if tc.loss_weighting != "simple" else []
        if unused:
            raise ValueError(
                f"training.{unused[0]} does not apply to distillation (the student starts "
                f"from the teacher and learns Salimans & Ho's target)"
            )

    def to_dict(self) -> dict[str, Any]:
        """A nested, YAML/JSON-friendly dict that :func:`distill_config_from_dict` reads back."""
        out: dict[str, Any] = {
            "out_dir": self.out_dir,
            "distill": dataclasses.asdict(self.distill),
            "data": self.data.to_dict(),
            "training": {
                **dataclasses.asdict(self.training),
                "adam_betas": list(self.training.adam_betas),
            },
        }
        if self.diffusion is not None:
            out["diffusion"] = dataclasses.asdict(self.diffusion)
        return out


_SECTIONS: dict[str, type] = {
    "distill": DistillSection,
    "data": DataConfig,
    "training": TrainingConfig,
    "diffusion": DiffusionConfig,
}


def load_distill_config(
    path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
) -> DistillConfig:
    """Read a YAML distillation config and apply ``key.sub=value`` overrides."""
    return distill_config_from_dict(read_sections(path, overrides, _SECTIONS), source=str(path))


def distill_config_from_dict(raw: dict[str, Any], source: str = "config") -> DistillConfig:
    """Build and validate a :class:`DistillConfig` from nested dicts."""
    unknown = sorted(set(raw) - {*_SECTIONS, "out_dir"})
    if unknown:
        raise ValueError(f"unknown config key {unknown[0]!r} in {source}")
    for name in ("distill", "data"):
        if not isinstance(raw.get(name), dict):
            raise ValueError(f"{source} needs a {name!r} section")
    sections = {
        name: build_section(cls, raw.get(name) or {}, name, source)
        for name, cls in _SECTIONS.items()
        if name != "diffusion" or raw.get(name) is not None
    }
    out_dir = raw.get("out_dir", "runs/distill")
    if not isinstance(out_dir, str) or not out_dir:
        raise ValueError(f"out_dir in {source} must be a non-empty path")
    try:
        return DistillConfig(out_dir=out_dir, **sections)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
