"""Starting a run from the weights of another checkpoint (``training.init``), as a
fine-tune does: a class-conditional model from the unconditional one, say, whose new class
embedding gets its own learning rate (``training.label_lr_scale``), and whose null label may
learn from an unconditional teacher (``training.null_teacher``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ddim.formats.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ddim.models.unet import UNet
from ddim.schedule import NoiseSchedule


def start_from(init: str, model: nn.Module, ema: AveragedModel, sched: NoiseSchedule) -> None:
    """Load the EMA weights of checkpoint ``init`` (a path or a bundled name) into ``model``
    and its EMA. The checkpoint must have been trained on ``sched`` and fit the model but
    for a class embedding (``label_emb``) it lacks, which keeps its zero initialisation: a
    conditional model started from an unconditional one predicts that model's eps for
    every label until it trains."""
    ckpt, source = _load_on("training.init", init, sched)
    try:
        result = model.load_state_dict(ckpt.ema_state, strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise CheckpointError(f"training.init {source} does not fit model: {first}") from None
    missing = [k for k in result.missing_keys if not k.startswith("label_emb.")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"training.init {source} does not fit model: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    ema.module.load_state_dict(model.state_dict())


def param_groups(model: nn.Module, label_lr_scale: float) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: a conditional model's class embedding on its own,
    its learning rate ``label_lr_scale`` times the rest's."""
    label = [p for name, p in model.named_parameters() if name.startswith("label_emb.")]
    rest = [p for name, p in model.named_parameters() if not name.startswith("label_emb.")]
    if not label:
        return [{"params": rest}]
    return [{"params": rest}, {"params": label, "lr_scale": label_lr_scale}]


def load_teacher(source: str, sched: NoiseSchedule, data_shape: tuple[int, ...]) -> UNet:
    """The frozen, eval-mode EMA U-Net of unconditional checkpoint ``source`` (a path or a
    bundled name), which must have been trained on ``sched`` for images of ``data_shape``."""
    ckpt, where = _load_on("training.null_teacher", source, sched)
    if ckpt.model_config.num_classes:
        raise CheckpointError(f"training.null_teacher {where} is class-conditional")
    if tuple(ckpt.data_shape) != tuple(data_shape):
        raise CheckpointError(
            f"training.null_teacher {where} takes {tuple(ckpt.data_shape)} images, "
            f"not {tuple(data_shape)}"
        )
    return ckpt.unet("ema").eval().requires_grad_(False)


def _load_on(key: str, source: str, sched: NoiseSchedule) -> tuple[Checkpoint, str]:
    """Checkpoint ``source`` (named by config ``key``) and the path it was read from; it
    must have been trained on ``sched``."""
    ckpt = load_checkpoint(source)
    where = str(ckpt.path or source)
    if not torch.equal(ckpt.schedule.betas, sched.betas):
        raise CheckpointError(f"{key} {where} was trained on another noise schedule")
    return ckpt, where
