"""The checkpoint folder of a training run, consistent whenever the process dies.

``<out_dir>/checkpoints/`` holds, for each checkpointed step ``N``:

- ``step_000000N.safetensors`` — raw and EMA weights with their config and schedule
  (:func:`ddim.formats.checkpoint.save_weights`), loadable with :func:`ddim.load_pretrained`;
- ``step_000000N.state.pt`` — everything else resuming needs: optimiser state, EMA update
  count, RNG states, the config (a plain dict read with ``torch.load(weights_only=True)``);

and ``latest.json``, the pointer to the newest complete pair. Each file is written
atomically and the pointer last, so a kill at any instant leaves the pointer naming a
complete, consistent checkpoint; files of a step the pointer does not name yet are
simply rewritten when that step comes round again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddim.formats.atomic import atomic_write, atomic_write_text
from ddim.formats.checkpoint import CheckpointError

LATEST = "latest.json"
STATE_FORMAT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.(safetensors|state\.pt)$")


@dataclass(frozen=True)
class Latest:
    """What ``latest.json`` points at."""

    step: int
    weights: Path
    state: Path


def checkpoint_paths(ckpt_dir: str | os.PathLike[str], step: int) -> tuple[Path, Path]:
    """The weights and training-state files of ``step``."""
    base = Path(ckpt_dir) / f"step_{step:07d}"
    return base.with_suffix(".safetensors"), base.with_suffix(".state.pt")


def write_state(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Write a training-state dict atomically (tensors and plain containers only)."""
    with atomic_write(path) as f:
        torch.save({"format_version": STATE_FORMAT_VERSION, **state}, f)


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training-state file with ``torch.load(weights_only=True)``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"training state {path} does not exist") from None
    except Exception as e:  # a torn or foreign file; never half-load it
        raise CheckpointError(f"training state {path} is truncated or corrupt ({e})") from None
    if not isinstance(state, dict) or state.get("format_version") != STATE_FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a ddim training-state file")
    return state


def write_latest(ckpt_dir: str | os.PathLike[str], step: int) -> None:
    """Point ``latest.json`` at ``step`` (call after both of its files are written)."""
    weights, state = checkpoint_paths(ckpt_dir, step)
    pointer = {"step": step, "weights": weights.name, "state": state.name}
    atomic_write_text(Path(ckpt_dir) / LATEST, json.dumps(pointer) + "\n")


def read_latest(ckpt_dir: str | os.PathLike[str]) -> Latest | None:
    """The checkpoint ``latest.json`` names, or ``None`` when there is no pointer yet."""
    path = Path(ckpt_dir) / LATEST
    try:
        pointer = json.loads(path.read_text(encoding="utf-8"))
        latest = Latest(
            int(pointer["step"]), path.parent / pointer["weights"], path.parent / pointer["state"]
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint pointer {path} is damaged ({e})") from None
    for file in (latest.weights, latest.state):
        if not file.is_file():
            raise CheckpointError(f"{path} names {file.name}, which does not exist")
    return latest


def prune(ckpt_dir: str | os.PathLike[str], latest_step: int, keep_last: int) -> list[int]:
    """Delete the files of all steps but the ``keep_last`` newest up to ``latest_step``.

    Files of steps after ``latest_step`` (written by a run killed before it moved the
    pointer) are left for the resumed run to overwrite. Returns the deleted steps.
    """
    steps = sorted(
        {int(m.group(1)) for p in Path(ckpt_dir).iterdir() if (m := _STEP_FILE.match(p.name))}
    )
    old = [s for s in steps if s <= latest_step][:-keep_last]
    for step in old:
        for file in checkpoint_paths(ckpt_dir, step):
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
    return old
