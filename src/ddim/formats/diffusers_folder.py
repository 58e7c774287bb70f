"""diffusers folders: a ``DDPMPipeline`` (``model_index.json``, ``unet/``, ``scheduler/``),
which ``DDIMPipeline.from_pretrained`` also loads, or a plain ``UNet2DModel`` folder, with
the noise schedule and what the network predicts in diffusers' scheduler config
(``prediction_type``: :data:`PREDICTION_TYPES`).
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
from ddim.parameterization import check_prediction
from ddim.schedule import NoiseSchedule

#: diffusers' ``prediction_type`` for each of our predictions (:mod:`ddim.parameterization`).
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x": "sample"}


def scheduler_config(schedule: NoiseSchedule, prediction: str = "eps") -> dict[str, Any]:
    """``DDPMScheduler`` keyword arguments for ``schedule`` and a network that predicts
    ``prediction``: a named schedule where one matches exactly, else the betas themselves
    (``trained_betas``)."""
    described = describe_schedule(schedule)
    config: dict[str, Any] = {
        "num_train_timesteps": schedule.num_timesteps,
        "prediction_type": PREDICTION_TYPES[check_prediction(prediction)],
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


def prediction_from_scheduler_config(config: Mapping[str, Any]) -> str:
    """Our name (``eps``, ``v`` or ``x``) for the config's ``prediction_type``; diffusers'
    default, ``epsilon``, where the config has none."""
    kind = config.get("prediction_type", "epsilon")
    for ours, theirs in PREDICTION_TYPES.items():
        if kind == theirs:
            return ours
    raise ValueError(
        f"the scheduler's prediction_type is {kind!r}; "
        f"ddim reads {', '.join(PREDICTION_TYPES.values())}"
    )


def schedule_from_scheduler_config(config: Mapping[str, Any]) -> NoiseSchedule:
    """The :class:`NoiseSchedule` of a diffusers scheduler config (betas in float64)."""
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
    """Write ``model`` and ``schedule`` as a diffusers ``DDPMPipeline`` folder, its
    scheduler's ``prediction_type`` the model's ``config.prediction``.

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
        scheduler=diffusers.DDPMScheduler(**scheduler_config(schedule, model.config.prediction)),
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
    ``scheduler_config.json`` beside it. The U-Net's ``config.prediction`` comes from the
    scheduler config's ``prediction_type`` (``eps`` without one). ``schedule`` overrides
    the scheduler config's schedule, and is needed when there is none.
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
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else {}
    if schedule is None:
        if not scheduler:
            raise FileNotFoundError(f"{scheduler_file} is missing; the noise schedule is unknown")
        schedule = schedule_from_scheduler_config(scheduler)
    prediction = prediction_from_scheduler_config(scheduler)
    try:
        unet = diffusers.UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"cannot load the diffusers UNet in {unet_dir}: {e}") from None
    return unet_from_diffusers(unet, prediction), schedule
