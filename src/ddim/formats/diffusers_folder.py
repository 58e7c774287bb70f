"""diffusers folders: a ``DDPMPipeline`` (``model_index.json``, ``unet/``, ``scheduler/``),
which ``DDIMPipeline.from_pretrained`` also loads, or a plain ``UNet2DModel`` folder, with
the noise schedule in diffusers' scheduler config.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ddim.formats.atomic import refuse_overwrite
from ddim.formats.checkpoint import describe_schedule
from ddim.formats.diffusers import import_diffusers, to_diffusers_unet, unet_from_diffusers
from ddim.models.unet import UNet
from ddim.schedule import NoiseSchedule


def scheduler_config(schedule: NoiseSchedule) -> dict[str, Any]:
    """``DDPMScheduler`` keyword arguments for ``schedule``: a named schedule where one
    matches exactly, else the betas themselves (``trained_betas``)."""
    described = describe_schedule(schedule)
    config: dict[str, Any] = {
        "num_train_timesteps": schedule.num_timesteps,
        "prediction_type": "epsilon",
    }
    if described["kind"] == "linear":
        config.update(
            beta_schedule="linear",
            beta_start=described["beta_start"],
            beta_end=described["beta_end"],
        )
    elif described["kind"] == "cosine":
        config.update(beta_schedule="squaredcos_cap_v2")
    else:
        config.update(trained_betas=schedule.betas.tolist())
    return config


def schedule_from_scheduler_config(config: Mapping[str, Any]) -> NoiseSchedule:
    """The :class:`NoiseSchedule` of a diffusers scheduler config (betas in float64)."""
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(
            f"the scheduler's prediction_type is {config['prediction_type']!r}; "
            f"ddim samples eps-prediction models only"
        )
    T = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return NoiseSchedule.from_betas(config["trained_betas"])
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if kind == "linear":
        return NoiseSchedule.linear(T, start, end)
    if kind == "scaled_linear":
        return NoiseSchedule.quad(T, start, end)
    if kind == "squaredcos_cap_v2":
        return NoiseSchedule.cosine(T)
    raise ValueError(f"diffusers beta_schedule {kind!r} is not supported here")


# ---------------------------------------------------------------- folders


def save_diffusers(
    model: UNet,
    schedule: NoiseSchedule,
    folder: str | os.PathLike[str],
    overwrite: bool = False,
) -> None:
    """Write ``model`` and ``schedule`` as a diffusers ``DDPMPipeline`` folder.

    The folder is assembled next to ``folder`` and renamed into place, so a crash leaves
    either the old folder or the new one. An existing ``folder`` is an error unless
    ``overwrite``.
    """
    diffusers = import_diffusers()
    target = Path(folder)
    refuse_overwrite(target, overwrite)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    pipe = diffusers.DDPMPipeline(
        unet=to_diffusers_unet(model),
        scheduler=diffusers.DDPMScheduler(**scheduler_config(schedule)),
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}.", dir=target.parent))
    try:
        pipe.save_pretrained(staging)
        if target.exists():
            old = staging.with_name(staging.name + ".old")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_diffusers_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a diffusers pipeline (``unet/config.json``) or a bare
    ``UNet2DModel`` (``config.json``)."""
    root = Path(folder)
    return (root / "unet" / "config.json").is_file() or (root / "config.json").is_file()


def load_diffusers(
    folder: str | os.PathLike[str], schedule: NoiseSchedule | None = None
) -> tuple[UNet, NoiseSchedule]:
    """Our eval-mode :class:`UNet` and its schedule from a diffusers folder.

    ``folder`` is a pipeline folder (``model_index.json`` with ``unet/`` and
    ``scheduler/``) or a ``UNet2DModel`` folder (``config.json``), with a
    ``scheduler_config.json`` beside it. ``schedule`` overrides the scheduler config, and
    is needed when there is none.
    """
    root = Path(folder)
    if not is_diffusers_folder(root):
        raise FileNotFoundError(
            f"{root} is not a diffusers folder (no config.json or unet/config.json)"
        )
    diffusers = import_diffusers()
    if (root / "unet" / "config.json").is_file():
        unet_dir, scheduler_file = root / "unet", root / "scheduler" / "scheduler_config.json"
    else:
        unet_dir, scheduler_file = root, root / "scheduler_config.json"
    if schedule is None:
        if not scheduler_file.is_file():
            raise FileNotFoundError(f"{scheduler_file} is missing; the noise schedule is unknown")
        schedule = schedule_from_scheduler_config(json.loads(scheduler_file.read_text()))
    try:
        unet = diffusers.UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"cannot load the diffusers UNet in {unet_dir}: {e}") from None
    return unet_from_diffusers(unet), schedule
