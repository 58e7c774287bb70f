"""Starting a run from the weights of another checkpoint (``training.init``), as a
fine-tune does: a class-conditional model from the unconditional one, say."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ddim.formats.checkpoint import CheckpointError, load_checkpoint
from ddim.schedule import NoiseSchedule


def start_from(init: str, model: nn.Module, ema: AveragedModel, sched: NoiseSchedule) -> None:
    """Load the EMA weights of checkpoint ``init`` (a path or a bundled name) into ``model``
    and its EMA. The checkpoint must have been trained on ``sched`` and fit the model but
    for a class embedding (``label_emb``) it lacks, which keeps its zero initialisation: a
    conditional model started from an unconditional one predicts that model's eps for
    every label until it trains."""
    ckpt = load_checkpoint(init)
    source = ckpt.path or init
    if not torch.equal(ckpt.schedule.betas, sched.betas):
        raise CheckpointError(f"training.init {source} was trained on another noise schedule")
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
