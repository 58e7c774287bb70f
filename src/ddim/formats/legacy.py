"""Weights from before safetensors: the official DDIM ``ckpt.pth`` and pesser's ``model-*.ckpt``.

Both store bare weights under our U-Net's parameter names and are read with
``torch.load(weights_only=True)``, never unpickling code. Their architecture and noise
schedule come from a YAML config: the official DDIM one (``model:``/``data:``/``diffusion:``
with ``num_diffusion_timesteps``) or a ddim training config; without one they are taken to
be the official CIFAR-10 model with the linear schedule of Ho et al.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ddim.formats.checkpoint import CheckpointError, check_state_dict
from ddim.formats.config_file import build_section, read_yaml
from ddim.models.unet import UNetConfig
from ddim.names import WEIGHTS
from ddim.schedule import DiffusionConfig, NoiseSchedule


def convert_legacy(
    path: str | os.PathLike[str],
    which: str = "ema",
    model_config: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """A U-Net state dict from an official DDIM or pesser checkpoint, keys in our layout.

    - official ``ckpt.pth``: ``[model_state, optimizer_state, epoch, step, ema_state]``
      with ``module.``-prefixed keys; ``which`` picks the EMA (last entry) or the model;
    - pesser's ``model-*.ckpt``: one flat state dict (``which`` is then irrelevant).

    The file is read with ``torch.load(weights_only=True)``: tensors and plain containers
    only, never arbitrary pickled code. With ``model_config`` the result is checked against
    that U-Net and every missing, unexpected or mis-shaped key is reported.
    """
    if which not in WEIGHTS:
        raise ValueError(f"which must be one of {', '.join(WEIGHTS)}, got {which!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"legacy checkpoint {path} does not exist or is not a file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it half-supports
            warnings.filterwarnings("ignore", category=UserWarning, module="torch")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than tensors{_what_else(str(e))}; refusing to unpickle "
            f"it, since unpickling them could run code"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ... for damaged archives
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({e})") from None
    state = _legacy_state(obj, which, path)
    if model_config is not None:
        check_state_dict(UNetConfig.from_dict(dict(model_config)), state, f"weights in {path}")
    return state


def _what_else(message: str) -> str:
    """`` (GLOBAL name)`` for the global that torch's weights-only unpickler refused, from
    its error ``message``; the rest of that message (which suggests unsafe ways to load the
    file) is not repeated."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return f" ({found.group(0)})" if found else ""


def _legacy_state(obj: Any, which: str, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, (list, tuple)):
        if which == "ema" and len(obj) < 5:
            raise CheckpointError(
                f"{path} is a list of {len(obj)} entries with no EMA state "
                f"(the official layout keeps it 5th); use which='model'"
            )
        obj = obj[-1] if which == "ema" else obj[0]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds no state dict (found {type(obj).__name__})")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(not_tensors[:8])}")
    prefix = "module."
    strip = all(str(k).startswith(prefix) for k in obj)
    return {(k[len(prefix) :] if strip else k): v for k, v in obj.items()}


def official_setup(raw: Mapping[str, Any]) -> tuple[UNetConfig, NoiseSchedule]:
    """The U-Net config and schedule of an official DDIM YAML config (already parsed)."""
    model, data, diffusion = raw["model"], raw["data"], raw["diffusion"]
    config = UNetConfig(
        in_channels=int(model["in_channels"]),
        out_channels=int(model["out_ch"]),
        ch=int(model["ch"]),
        ch_mult=tuple(model["ch_mult"]),
        num_res_blocks=int(model["num_res_blocks"]),
        attn_resolutions=tuple(model["attn_resolutions"]),
        dropout=float(model.get("dropout", 0.0)),
        resamp_with_conv=bool(model.get("resamp_with_conv", True)),
        image_size=int(data["image_size"]),
    )
    T = int(diffusion["num_diffusion_timesteps"])
    start, end = float(diffusion["beta_start"]), float(diffusion["beta_end"])
    kind = diffusion["beta_schedule"]
    if kind == "linear":
        return config, NoiseSchedule.linear(T, start, end)
    if kind == "quad":
        return config, NoiseSchedule.quad(T, start, end)
    raise ValueError(f"beta_schedule {kind!r} is not supported (linear and quad are)")


def legacy_setup(config: str | os.PathLike[str] | None) -> tuple[UNetConfig, NoiseSchedule]:
    """The architecture and schedule for bare legacy weights, from an official DDIM or a
    ddim training YAML config; ``None`` gives the official CIFAR-10 model."""
    if config is None:
        return UNetConfig(), NoiseSchedule.linear()
    path = Path(config)
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("diffusion"), dict):
        raise ValueError(f"config {path} has no 'diffusion' section")
    try:
        if "num_diffusion_timesteps" in raw["diffusion"]:
            return official_setup(raw)
    except (KeyError, TypeError) as e:
        raise ValueError(f"official DDIM config {path} lacks {e}") from None
    model = build_section(UNetConfig, raw.get("model"), "model", str(path))
    return model, build_section(DiffusionConfig, raw["diffusion"], "diffusion", str(path)).build()
