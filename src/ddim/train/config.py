"""The typed training configuration, read from YAML with ``key.sub=value`` overrides.

A config file has five top-level keys::

    out_dir: runs/mnist        # relative paths resolve against the working directory
    model: {...}               # UNetConfig fields
    diffusion: {...}           # DiffusionConfig fields
    data: {...}                # DataConfig fields
    training: {...}            # TrainingConfig fields

Unknown keys anywhere are an error that names the key; ``training.eps``, Adam's epsilon in
the official configs, is read as ``training.adam_eps``. Values are coerced to the field's
type where that is unambiguous: YAML reads ``1e-4`` (no dot) as a string, which a float
field accepts, and lists become tuples.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ddim.formats.config_file import build_section, read_yaml
from ddim.formats.datasets import DataConfig
from ddim.models.unet import UNetConfig
from ddim.names import LOSS_WEIGHTINGS, PRECISIONS
from ddim.schedule import DiffusionConfig


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation and bookkeeping; the defaults are the official CIFAR-10 settings.

    ``batch_size`` is the global batch of one optimiser step, split over processes and
    then over ``grad_accum`` micro-batches. ``warmup_steps`` ramps the learning rate
    linearly from ``lr / warmup_steps``, and ``cooldown_steps`` lets it fall linearly over
    the last that many steps of ``total_steps`` (warm-up, stable, decay: a run at constant
    rate can be resumed with a cooldown added, the same run up to its start; see
    :func:`ddim.train.loop.learning_rate`); ``grad_clip`` is the max global grad norm (0
    disables clipping). ``antithetic`` pairs ``t`` with ``T - 1 - t`` as the official code
    does. ``ckpt_every``/``sample_every``/``log_every`` are in steps (0 disables samples);
    ``keep_last`` checkpoints are kept. ``device`` is ``auto``, ``cpu``, ``cuda`` or
    ``cuda:N``. ``precision`` is the forward pass's autocast (:mod:`ddim.precision`; the
    loss, the optimiser and the EMA stay in fp32); ``channels_last`` and ``compile`` run
    the model in channels-last layout and under ``torch.compile``. ``loss_weighting`` and
    ``min_snr_gamma`` weight the loss across ``t`` (:mod:`ddim.train.loss`).
    ``label_dropout`` (class-conditional models) is the share of labels replaced by the
    null label, so one network learns the conditional and the unconditional eps that
    classifier-free guidance combines (Ho & Salimans 2022; 0.1-0.2 is usual);
    ``label_lr_scale`` multiplies the learning rate of its class embedding, which a short
    fine-tune from unconditional weights must grow from zero. ``init``
    names a checkpoint (a path or a bundled name such as ``mnist``) whose EMA weights start
    the run instead of a random initialisation; a class embedding it lacks starts at zero.
    ``null_teacher`` names an unconditional checkpoint on the same schedule whose eps is the
    target of the samples whose label was dropped (:mod:`ddim.train.loss`), so the null
    label learns the unconditional model it names.
    """

    # the optimisation
    total_steps: int = 800_000
    batch_size: int = 128
    lr: float = 2e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 5000
    cooldown_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    grad_accum: int = 1
    # the objective and its randomness
    loss_weighting: str = "simple"
    min_snr_gamma: float = 5.0
    antithetic: bool = True
    seed: int = 0
    label_dropout: float = 0.0
    label_lr_scale: float = 1.0
    init: str | None = None
    null_teacher: str | None = None
    # checkpoints, sample grids and the log
    ckpt_every: int = 5000
    keep_last: int = 3
    sample_every: int = 5000
    num_samples: int = 64
    sample_steps: int = 50
    log_every: int = 50
    # where and how the model runs
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        positive = (
            "total_steps",
            "batch_size",
            "grad_accum",
            "ckpt_every",
            "keep_last",
            "num_samples",
            "sample_steps",
            "log_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "cooldown_steps", "sample_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"training.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "adam_eps", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (value == 0 and name in ("lr", "adam_eps")):
                raise ValueError(f"training.{name} must be a finite number > 0, got {value}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(
                f"training.adam_betas must be two numbers in [0, 1), got {self.adam_betas}"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"training.ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(
                f"training.loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, "
                f"got {self.loss_weighting!r}"
            )
        if not math.isfinite(self.min_snr_gamma) or self.min_snr_gamma <= 0:
            raise ValueError(
                f"training.min_snr_gamma must be a finite number > 0, got {self.min_snr_gamma}"
            )
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"training.label_dropout must lie in [0, 1), got {self.label_dropout}")
        if not math.isfinite(self.label_lr_scale) or self.label_lr_scale <= 0:
            raise ValueError(
                f"training.label_lr_scale must be a finite number > 0, got {self.label_lr_scale}"
            )
        if self.init is not None and (not isinstance(self.init, str) or not self.init):
            raise ValueError(f"training.init must be a checkpoint path or name, got {self.init!r}")
        teacher = self.null_teacher
        if teacher is not None and (not isinstance(teacher, str) or not teacher):
            raise ValueError(
                f"training.null_teacher must be a checkpoint path or name, got {teacher!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"training.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.cooldown_steps > self.total_steps:
            raise ValueError(
                f"training.cooldown_steps={self.cooldown_steps} exceeds "
                f"total_steps={self.total_steps}"
            )
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"training.batch_size={self.batch_size} is not divisible by "
                f"grad_accum={self.grad_accum}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    model: UNetConfig
    diffusion: DiffusionConfig
    data: DataConfig
    training: TrainingConfig = field(default_factory=TrainingConfig)
    out_dir: str = "runs/ddim"

    def __post_init__(self) -> None:
        shape = (self.data.channels, self.data.image_size)
        if shape != (self.model.in_channels, self.model.image_size):
            raise ValueError(
                f"data gives {self.data.channels}x{self.data.image_size}px images but the "
                f"model takes {self.model.in_channels}x{self.model.image_size}px"
            )
        if self.model.out_channels != self.model.in_channels:
            raise ValueError(
                f"model.out_channels={self.model.out_channels} must equal model.in_channels="
                f"{self.model.in_channels} (the model predicts eps)"
            )
        if self.training.label_dropout and not self.model.num_classes:
            raise ValueError(
                "training.label_dropout needs a class-conditional model (model.num_classes > 0)"
            )
        if self.training.null_teacher and not self.training.label_dropout:
            raise ValueError(
                "training.null_teacher needs label dropout (training.label_dropout > 0)"
            )

    def to_dict(self) -> dict[str, Any]:
        """A nested, YAML/JSON-friendly dict that :func:`config_from_dict` reads back."""
        return {
            "out_dir": self.out_dir,
            "model": self.model.to_dict(),
            "diffusion": dataclasses.asdict(self.diffusion),
            "data": self.data.to_dict(),
            "training": {
                **dataclasses.asdict(self.training),
                "adam_betas": list(self.training.adam_betas),
            },
        }


_SECTIONS: dict[str, type] = {
    "model": UNetConfig,
    "diffusion": DiffusionConfig,
    "data": DataConfig,
    "training": TrainingConfig,
}


def load_config(
    path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a YAML config and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    return config_from_dict(read_sections(path, overrides, _SECTIONS), source=str(path))


def read_sections(
    path: str | os.PathLike[str], overrides: Sequence[str], sections: Mapping[str, type]
) -> dict[str, Any]:
    """The mapping of sections a YAML config file holds, with ``key.sub=value`` overrides
    (into ``sections``) applied: what a config class is then built from."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ValueError(f"config {path} must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item, sections)
    return raw


def apply_override(
    raw: dict[str, Any], item: str, sections: Mapping[str, type] | None = None
) -> None:
    """Set ``raw[a][b] = value`` from ``"a.b=value"`` (the value is parsed as YAML); ``a``
    must be one of ``sections`` (those of a training config by default)."""
    sections = _SECTIONS if sections is None else sections
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ValueError(f"override {item!r} must look like section.key=value")
    if parts[0] == "out_dir" and len(parts) == 1:
        raw["out_dir"] = text
        return
    if len(parts) != 2 or parts[0] not in sections:
        raise ValueError(f"unknown config key {key!r} in override {item!r}")
    section = raw.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ValueError(f"config section {parts[0]!r} must be a mapping")
    section[parts[1]] = yaml.safe_load(text) if text.strip() else None


#: Training keys of the official configs (and of older runs) and the names they go by here.
RENAMED = {"eps": "adam_eps"}


def _renamed_keys(training: Any, source: str) -> Any:
    """The ``training`` section with the keys of :data:`RENAMED` under their names here."""
    if not isinstance(training, dict):
        return training
    out = dict(training)
    for old, new in RENAMED.items():
        if old in out:
            if new in out:
                raise ValueError(f"{source} sets both training.{old} and training.{new}")
            out[new] = out.pop(old)
    return out


def config_from_dict(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from nested dicts."""
    unknown = sorted(set(raw) - {*_SECTIONS, "out_dir"})
    if unknown:
        raise ValueError(f"unknown config key {unknown[0]!r} in {source}")
    for name in ("model", "diffusion", "data"):
        if not isinstance(raw.get(name), dict):
            raise ValueError(f"{source} needs a {name!r} section")
    raw = {**raw, "training": _renamed_keys(raw.get("training") or {}, source)}
    sections = {
        name: build_section(cls, raw.get(name) or {}, name, source)
        for name, cls in _SECTIONS.items()
    }
    out_dir = raw.get("out_dir", "runs/ddim")
    if not isinstance(out_dir, str) or not out_dir:
        raise ValueError(f"out_dir in {source} must be a non-empty path")
    try:
        return TrainConfig(out_dir=out_dir, **sections)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
