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
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ddim.formats.atomic import atomic_write, atomic_write_text, remove_stale_temps
from ddim.formats.checkpoint import CheckpointError, load_checkpoint
from ddim.train.config import TrainConfig, config_from_dict

LATEST = "latest.json"
STATE_FORMAT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.(safetensors|state\.pt)$")
# Config keys that change only the floating-point arithmetic of the steps still to come
# (where and how the same model and updates are computed), so a run may move to another
# machine or speed setting when it resumes. Within one setting a resume stays bit-identical;
# across settings it is the same run up to rounding (and, for channels_last, other dropout
# masks, which follow the memory layout). The resume message names each change.
ARITHMETIC_KEYS = frozenset(
    f"training.{k}" for k in ("device", "precision", "channels_last", "compile")
)
# Config keys that may change when a run is resumed without changing its plan
# (total_steps and cooldown_steps only while no cooldown has begun: see cooldown_change).
RESUMABLE_KEYS = ARITHMETIC_KEYS | frozenset(
    {"out_dir", "data.path", "data.workers", "data.strict"}
    | {
        f"training.{k}"
        for k in (
            "total_steps",
            "cooldown_steps",
            "ckpt_every",
            "keep_last",
            "sample_every",
            "num_samples",
            "sample_steps",
            "log_every",
        )
    }
)


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


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG states (saved for completeness: every draw is re-seeded per step)."""
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore(
    latest: Latest,
    config: TrainConfig,
    model: nn.Module,
    ema: AveragedModel,
    opt: torch.optim.Optimizer,
    data: Mapping[str, Any] | None = None,
    accept_data_change: bool = False,
) -> tuple[int, list[str]]:
    """Load the checkpoint ``latest`` names into the model, EMA and optimiser; its step, and
    the :data:`ARITHMETIC_KEYS` that ``config`` changes, as ``"key: old -> new"``.

    ``data`` describes the data the run goes on with (source, count, fingerprint); if the
    checkpoint recorded other data, resuming is refused unless ``accept_data_change`` (the
    change is then named among the returned changes)."""
    ckpt = load_checkpoint(latest.weights)
    state = read_state(latest.state)
    if not ckpt.step == state["step"] == latest.step:
        raise CheckpointError(
            f"{latest.weights} (step {ckpt.step}) and {latest.state} (step {state['step']}) "
            f"do not belong to step {latest.step}"
        )
    if ckpt.model_state is None:
        raise CheckpointError(f"{latest.weights} lacks the raw model weights needed to resume")
    changed = config_changes(state["config"], config.to_dict())
    if changed:
        raise ValueError(
            f"the config differs from the one {latest.state} was trained with in "
            f"{', '.join(changed)}; only {', '.join(sorted(RESUMABLE_KEYS))} may change"
        )
    problem = cooldown_change(state["config"], config.to_dict(), latest.step)
    if problem:
        raise ValueError(problem)
    changed_data = data_change(state.get("data"), data)
    if changed_data and not accept_data_change:
        raise ValueError(
            f"the training data changed since step {latest.step}: {changed_data}; pass "
            f"--accept-data-change to go on with the new data"
        )
    model.load_state_dict(ckpt.model_state)
    ema.module.load_state_dict(ckpt.ema_state)
    ema.n_averaged.fill_(state["ema_updates"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    cuda_states = state["rng"]["cuda"]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    old, new = flatten(state["config"]), flatten(config.to_dict())
    moved = [k for k in sorted(ARITHMETIC_KEYS) if old.get(k) != new.get(k)]
    notes = [f"{k}: {old.get(k)} -> {new.get(k)}" for k in moved]
    return latest.step, notes + ([f"data: {changed_data}"] if changed_data else [])


def data_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str | None:
    """How the data a run resumes on differ from those recorded at its checkpoint, or
    None (also when either is unknown: checkpoints from before data were recorded)."""
    if not old or not new or old["fingerprint"] == new["fingerprint"]:
        return None
    if old["count"] != new["count"]:
        return f"{new['source']} holds {new['count']} images, {old['count']} when it was saved"
    return f"{new['source']} holds other images than when it was saved (same count, {new['count']})"


def cooldown_change(old: dict[str, Any], new: dict[str, Any], step: int) -> str | None:
    """Why resuming at ``step`` with ``new`` would change the learning rates of the ``step``
    updates already made under ``old``, or None. The rate depends on ``total_steps`` and
    ``cooldown_steps`` only from the cooldown's start (``total_steps - cooldown_steps``),
    so both may change while neither config's cooldown has begun."""
    runs = [c["training"] for c in (old, new)]
    plans = [(t["total_steps"], t.get("cooldown_steps", 0)) for t in runs]
    starts = [total - cooldown if cooldown else math.inf for total, cooldown in plans]
    if plans[0] == plans[1] or step <= min(starts):
        return None
    (old_total, old_cool), (new_total, new_cool) = plans
    return (
        f"cannot resume at step {step} with total_steps={new_total}, cooldown_steps={new_cool}: "
        f"the run was trained with total_steps={old_total}, cooldown_steps={old_cool}, and the "
        f"learning rate of the steps done would differ (a cooldown begins at step "
        f"{int(min(starts)) + 1})"
    )


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, other than those in :data:`RESUMABLE_KEYS`. Both
    configs are read as today's :class:`TrainConfig`, so a key added since ``old`` was
    written counts as its default."""
    flat_old, flat_new = (flatten(config_from_dict(c).to_dict()) for c in (old, new))
    keys = sorted(set(flat_old) | set(flat_new))
    return [k for k in keys if k not in RESUMABLE_KEYS and flat_old.get(k) != flat_new.get(k)]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``d`` with nested dicts flattened into dotted keys (``"model.ch"``) and tuples made
    lists, so two configs compare key by key."""
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return flat


def prepare_out_dir(config: TrainConfig, step: int, fresh: bool) -> None:
    """Create the run folder, clear debris a killed run left, and record the config."""
    out = Path(config.out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "checkpoints", out / "samples"):
        if folder.is_dir():
            remove_stale_temps(folder)
    _truncate_log(out / "log.jsonl", step)
    if fresh:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records past ``step`` (written by a run that died before checkpointing)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if json.loads(line)["step"] <= step:
                kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
