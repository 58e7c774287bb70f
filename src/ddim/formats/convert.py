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
from dataclasses import dataclass, field
from typing import Any

import torch

from ddim.formats.atomic import refuse_overwrite
from ddim.formats.checkpoint import CheckpointError, load_checkpoint, save_weights
from ddim.formats.legacy import convert_legacy, legacy_setup
from ddim.models.unet import UNet
from ddim.names import CONVERT_SOURCES as SOURCES
from ddim.names import CONVERT_TARGETS as TARGETS
from ddim.names import WEIGHT_DTYPES
from ddim.precision import DTYPES
from ddim.schedule import NoiseSchedule

#: The storage type of each of :data:`~ddim.names.WEIGHT_DTYPES`.
STORAGE = {"fp32": torch.float32, **DTYPES}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to save in another format, with what its checkpoint said about it: the
    training step and the ``extra`` metadata of a ddim checkpoint (its training config)."""

    model: UNet
    schedule: NoiseSchedule
    step: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


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
        from ddim.formats.diffusers_folder import load_diffusers

        model, schedule = load_diffusers(src)
        return LoadedModel(model, schedule)
    if fmt == "ours":
        ckpt = load_checkpoint(src)
        return LoadedModel(ckpt.unet(which), ckpt.schedule, ckpt.step, ckpt.extra)
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
    dtype: str = "fp32",
) -> None:
    """Write a model in format ``fmt`` (one of :data:`TARGETS`): a ddim checkpoint holding
    EMA weights only (its ``extra`` metadata: the source's, and ``converted_from``), or a
    diffusers pipeline folder.

    ``dtype`` (one of :data:`~ddim.names.WEIGHT_DTYPES`, ddim checkpoints only) stores the
    weights rounded to 16 bits, half the file; loading casts them back to float32, so the
    model computes as one whose weights were rounded once.
    """
    _check_target(dst, fmt, overwrite)
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(
            f"unknown weight dtype {dtype!r}; choose one of {', '.join(WEIGHT_DTYPES)}"
        )
    if dtype != "fp32" and fmt != "ours":
        raise ValueError(f"a {dtype} copy of the weights is written to a ddim checkpoint only")
    if fmt == "diffusers":
        from ddim.formats.diffusers_folder import save_diffusers

        save_diffusers(loaded.model, loaded.schedule, dst, overwrite=overwrite)
        return
    config = loaded.model.config
    stored = STORAGE[dtype]
    save_weights(
        dst,
        None,
        {k: v.to(stored) for k, v in loaded.model.state_dict().items()},
        model_config=config.to_dict(),
        schedule=loaded.schedule,
        data_shape=(config.in_channels, config.image_size, config.image_size),
        step=loaded.step,
        extra_meta={
            **loaded.extra,
            **({"converted_from": source} if source else {}),
            **({"weight_dtype": dtype} if dtype != "fp32" else {}),
        },
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
    dtype: str = "fp32",
) -> LoadedModel:
    """Convert ``src`` (format ``src_format``) to ``dst`` (format ``dst_format``); returns
    the loaded model. The result computes the same eps as the source up to float error, or
    up to the rounding of its weights to ``dtype`` (see :func:`save_any`)."""
    _check_target(dst, dst_format, overwrite)
    loaded = load_any(src, src_format, config=config, which=which)
    save_any(
        loaded, dst, dst_format, overwrite=overwrite, source=f"{src_format}:{src}", dtype=dtype
    )
    return loaded


def _check_target(dst: str | os.PathLike[str], fmt: str, overwrite: bool) -> None:
    """Reject an unknown target format, or an existing ``dst`` without ``overwrite``."""
    if fmt not in TARGETS:
        raise ValueError(f"unknown target format {fmt!r}; choose one of {', '.join(TARGETS)}")
    refuse_overwrite(dst, overwrite)
