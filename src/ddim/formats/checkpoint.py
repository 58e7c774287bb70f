"""Self-describing weight files: a model and its schedule from nothing but a path.

A checkpoint is one ``.safetensors`` file (no pickle, so loading never runs code) that holds:

- ``ema.<name>`` — the EMA weights of the U-Net, the ones to sample with (always present);
- ``model.<name>`` — the raw training weights (optional; training checkpoints keep them so a
  run can resume, exported and bundled models store EMA only);
- ``schedule.betas`` — the float64 betas, so any schedule round-trips bit-exactly;

and string metadata: ``format`` / ``format_version``, ``ddim_version``, ``model_config``
(JSON of :class:`~ddim.models.unet.UNetConfig`), ``schedule`` (JSON: ``kind`` and its
parameters where recognised, for display), ``data_shape``, ``step``, ``extra`` (JSON) and
``sha256``, a digest of every tensor (and, from format version 2, of ``model_config``
and ``data_shape``) that makes a corrupted or edited file fail loudly.
:mod:`ddim.formats.checkpoint_meta` checks this self-description as a whole.

The official DDIM ``ckpt.pth`` and pesser's ``model-*.ckpt`` files use the same parameter
names as our U-Net; :mod:`ddim.formats.legacy` reads them.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ddim import assets
from ddim.formats.atomic import atomic_write_bytes
from ddim.formats.checkpoint_meta import (
    BETAS_KEY,
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    check_shapes,
    describe,
    digest,
    model_description,
    read_header,
)
from ddim.models.unet import UNet, UNetConfig
from ddim.names import WEIGHTS
from ddim.schedule import NoiseSchedule

BUNDLED = {
    "mnist": "mnist.safetensors",
    "mnist-cond": "mnist-cond.safetensors",
    "mnist-4step": "mnist-4step.safetensors",
    "mnist-2step": "mnist-2step.safetensors",
}


@dataclass(frozen=True)
class Checkpoint:
    """Everything a weight file holds, loaded and verified."""

    model_config: UNetConfig
    schedule: NoiseSchedule
    data_shape: tuple[int, ...]
    step: int
    ema_state: dict[str, torch.Tensor]
    model_state: dict[str, torch.Tensor] | None
    extra: dict[str, Any] = field(default_factory=dict)
    ddim_version: str = "unknown"
    path: Path | None = None

    def unet(self, which: str = "ema") -> UNet:
        """An eval-mode U-Net on the CPU with the ``"ema"`` or the raw ``"model"`` weights."""
        if which not in WEIGHTS:
            raise ValueError(f"which must be one of {', '.join(WEIGHTS)}, got {which!r}")
        state = self.ema_state if which == "ema" else self.model_state
        if state is None:
            raise CheckpointError(
                f"{self.path or 'the checkpoint'} stores EMA weights only; load it with which='ema'"
            )
        model = UNet(self.model_config)
        model.load_state_dict(state)
        return model.eval()


def save_weights(
    path: str | os.PathLike[str],
    model_state: Mapping[str, torch.Tensor] | None,
    ema_state: Mapping[str, torch.Tensor],
    *,
    model_config: Mapping[str, Any],
    schedule: NoiseSchedule,
    data_shape: tuple[int, ...],
    step: int,
    extra_meta: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (see the module docstring for its layout).

    ``model_state`` may be ``None`` to store the EMA weights alone. Both state dicts are
    checked against a U-Net built from ``model_config`` before anything is written.
    """
    config = UNetConfig.from_dict(dict(model_config))
    states = {"ema": ema_state} if model_state is None else {"ema": ema_state, "model": model_state}
    for which, state in states.items():
        check_state_dict(config, state, f"{which} weights to save to {path}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    shape = [int(d) for d in data_shape]
    expected = [config.in_channels, config.image_size, config.image_size]
    if shape != expected:
        raise ValueError(f"data_shape {shape} for {path} is not the model's (C, H, W) {expected}")
    tensors = {
        f"{which}.{k}": v.detach().to("cpu", copy=True).contiguous()
        for which, state in states.items()
        for k, v in state.items()
    }
    tensors[BETAS_KEY] = schedule.betas.clone()
    try:
        extra = json.dumps(dict(extra_meta or {}), sort_keys=True)
    except TypeError as e:
        raise ValueError(f"extra_meta for {path} must be JSON-serialisable: {e}") from None
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "ddim_version": _package_version(),
        "model_config": json.dumps(config.to_dict(), sort_keys=True),
        "schedule": json.dumps(describe_schedule(schedule), sort_keys=True),
        "data_shape": json.dumps(shape),
        "step": str(step),
        "extra": extra,
        "sha256": digest(tensors, model_description(config, shape)),
    }
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def load_checkpoint(path_or_name: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint file (or a bundled name such as ``"mnist"``)."""
    path = resolve(path_or_name)
    raw = path.read_bytes()
    meta = describe(path, read_header(path, raw)[0])
    try:
        tensors = safetensors.torch.load(raw)
    except Exception as e:  # safetensors raises its own untyped error on a bad buffer
        raise CheckpointError(f"{path} is truncated or not a safetensors file ({e})") from None
    config = UNetConfig.from_dict(meta["model_config"])
    if meta["format_version"] == 1:
        stored, what = digest(tensors), "its tensors do not"
    else:
        stored = digest(tensors, model_description(config, meta["data_shape"]))
        what = "its tensors, model_config or data_shape do not"
    if stored != meta["sha256"]:
        raise CheckpointError(f"{path} is corrupt: {what} match the stored sha256")
    return Checkpoint(
        model_config=config,
        schedule=NoiseSchedule.from_betas(tensors[BETAS_KEY]),
        data_shape=tuple(meta["data_shape"]),
        step=meta["step"],
        ema_state=_with_prefix(tensors, "ema."),
        model_state=_with_prefix(tensors, "model.") or None,
        extra=meta["extra"],
        ddim_version=meta["ddim_version"],
        path=path,
    )


def load_pretrained(
    path_or_name: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    which: str = "ema",
) -> tuple[UNet, NoiseSchedule]:
    """A ready, eval-mode U-Net and the schedule it was trained with.

    ``path_or_name`` is a ``.safetensors`` checkpoint or a bundled name (``"mnist"``).
    ``which`` picks the ``"ema"`` weights (the default, for sampling) or the raw ``"model"``
    weights, which only training checkpoints carry.
    """
    ckpt = load_checkpoint(path_or_name)
    return ckpt.unet(which).to(device), ckpt.schedule


def read_metadata(path_or_name: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a checkpoint without loading its weights.

    Keys: ``format_version``, ``ddim_version``, ``model_config`` (dict), ``schedule`` (dict),
    ``data_shape`` (list), ``step`` (int), ``extra`` (dict), ``weights`` (``["ema"]`` or
    ``["ema", "model"]``), ``num_parameters`` (of one set of weights), ``sha256`` and
    ``path``. The file's length is checked against its header, so a truncated file is an
    error, and the header is checked as :func:`load_checkpoint` checks it.
    """
    path = resolve(path_or_name)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        raw = head + f.read(min(n, size))
    header, data_len = read_header(path, raw)
    if 8 + n + data_len != size:
        raise CheckpointError(f"{path} is truncated or has trailing bytes ({size} bytes on disk)")
    meta = describe(path, header)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    meta["weights"] = [w for w in WEIGHTS if any(k.startswith(f"{w}.") for k in entries)]
    meta["num_parameters"] = sum(
        math.prod(v["shape"]) for k, v in entries.items() if k.startswith("ema.")
    )
    meta["path"] = str(path)
    return meta


def describe_schedule(schedule: NoiseSchedule) -> dict[str, Any]:
    """``{"kind": ..., "num_timesteps": ..., <params>}``: ``linear`` or ``cosine`` when the
    betas are exactly what that constructor gives, else ``custom``."""
    T = schedule.num_timesteps
    b0, b1 = schedule.betas[0].item(), schedule.betas[-1].item()
    if torch.equal(schedule.betas, NoiseSchedule.linear(T, b0, b1).betas):
        return {"kind": "linear", "num_timesteps": T, "beta_start": b0, "beta_end": b1}
    if torch.equal(schedule.betas, NoiseSchedule.cosine(T).betas):
        return {"kind": "cosine", "num_timesteps": T}
    return {"kind": "custom", "num_timesteps": T}


def check_state_dict(config: UNetConfig, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys."""
    check_shapes(config, {k: tuple(v.shape) for k, v in state.items()}, source)


def resolve(path_or_name: str | os.PathLike[str]) -> Path:
    """The file behind a path or a bundled model name (unless a file of that name exists);
    a clear error if it does not exist."""
    path = Path(path_or_name)
    if isinstance(path_or_name, str) and path_or_name in BUNDLED and not path.is_file():
        asset = assets.path(BUNDLED[path_or_name])
        if not asset.is_file():
            raise FileNotFoundError(
                f"the bundled {path_or_name!r} model is not installed (expected {asset}); "
                f"train it with `python -m ddim.train configs/{path_or_name}.yaml`"
            )
        return asset
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist or is not a file")
    return path


def _with_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _package_version() -> str:
    try:
        return importlib.metadata.version("ddim")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
