"""Convert weights between the official DDIM, pesser, diffusers and ddim formats.

Sources: ``official`` (the DDIM authors' ``ckpt.pth``), ``pesser`` (``model-*.ckpt`` of
pytorch_diffusion), ``ours`` (a ddim ``.safetensors`` checkpoint) and ``diffusers`` (a
pipeline or ``UNet2DModel`` folder). Targets: ``ours`` and ``diffusers``.

The legacy formats store bare weights; their architecture and noise schedule come from a
YAML config: the official DDIM one (``model:``/``data:``/``diffusion:`` with
``num_diffusion_timesteps``) or a ddim training config. Without one they are taken to be
the official CIFAR-10 model with the linear schedule of Ho et al.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddim.formats.checkpoint import CheckpointError, convert_legacy, load_checkpoint, save_weights
from ddim.models.unet import UNet, UNetConfig
from ddim.schedule import NoiseSchedule
from ddim.train.config import config_from_dict, read_yaml

SOURCES = ("official", "pesser", "ours", "diffusers")
TARGETS = ("ours", "diffusers")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to save in another format, with what its checkpoint said about it."""

    model: UNet
    schedule: NoiseSchedule
    step: int = 0


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
        return config, NoiseSchedule.from_betas(np.linspace(start**0.5, end**0.5, T) ** 2)
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
    run = config_from_dict(raw, source=str(path))
    return run.model, run.diffusion.build()


def load_any(
    src: str | os.PathLike[str],
    fmt: str,
    *,
    config: str | os.PathLike[str] | None = None,
    which: str = "ema",
) -> LoadedModel:
    """Load weights in format ``fmt`` (one of :data:`SOURCES`) into our U-Net.

    ``config`` describes legacy weights (see :func:`legacy_setup`); ``which`` picks the
    EMA or the raw weights where a file has both.
    """
    if fmt not in SOURCES:
        raise ValueError(f"unknown source format {fmt!r}; choose one of {', '.join(SOURCES)}")
    if fmt == "diffusers":
        from ddim.formats.diffusers import load_diffusers

        model, schedule = load_diffusers(src)
        return LoadedModel(model, schedule)
    if fmt == "ours":
        ckpt = load_checkpoint(src)
        return LoadedModel(ckpt.unet(which), ckpt.schedule, ckpt.step)
    unet_config, schedule = legacy_setup(config)
    try:
        state = convert_legacy(src, which, unet_config.to_dict())
    except CheckpointError as e:
        if config is not None or "do not fit" not in str(e):
            raise
        raise CheckpointError(
            f"{e} (the weights were checked against the official CIFAR-10 model; "
            f"give the model's YAML config)"
        ) from None
    model = UNet(unet_config)
    model.load_state_dict(state)
    return LoadedModel(model.eval(), schedule)


def save_any(
    loaded: LoadedModel,
    dst: str | os.PathLike[str],
    fmt: str,
    *,
    overwrite: bool = False,
    source: str = "",
) -> None:
    """Write a model in format ``fmt`` (one of :data:`TARGETS`): a ddim checkpoint holding
    EMA weights only, or a diffusers pipeline folder."""
    _check_target(dst, fmt, overwrite)
    if fmt == "diffusers":
        from ddim.formats.diffusers import save_diffusers

        save_diffusers(loaded.model, loaded.schedule, dst, overwrite=overwrite)
        return
    config = loaded.model.config
    save_weights(
        dst,
        None,
        loaded.model.state_dict(),
        model_config=config.to_dict(),
        schedule=loaded.schedule,
        data_shape=(config.in_channels, config.image_size, config.image_size),
        step=loaded.step,
        extra_meta={"converted_from": source} if source else None,
    )


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    src_format: str,
    dst_format: str,
    *,
    config: str | os.PathLike[str] | None = None,
    which: str = "ema",
    overwrite: bool = False,
) -> LoadedModel:
    """Convert ``src`` (format ``src_format``) to ``dst`` (format ``dst_format``); returns
    the loaded model. The result computes the same eps as the source up to float error."""
    _check_target(dst, dst_format, overwrite)
    loaded = load_any(src, src_format, config=config, which=which)
    save_any(loaded, dst, dst_format, overwrite=overwrite, source=f"{src_format}:{src}")
    return loaded


def _check_target(dst: str | os.PathLike[str], fmt: str, overwrite: bool) -> None:
    """Reject an unknown target format, or an existing ``dst`` without ``overwrite``."""
    if fmt not in TARGETS:
        raise ValueError(f"unknown target format {fmt!r}; choose one of {', '.join(TARGETS)}")
    if Path(dst).exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=True to replace it")
