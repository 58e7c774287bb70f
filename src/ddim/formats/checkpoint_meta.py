"""A checkpoint's self-description, read from its safetensors header and checked as a whole.

:func:`describe` is the one place that decides whether a header describes a usable ddim
checkpoint: every metadata field has the right type and range, ``model_config`` builds a
:class:`~ddim.models.unet.UNetConfig`, ``data_shape`` is the image shape that config takes,
and the tensors the header lists have the shapes that config needs. It reads no tensor
data, so ``ddim info`` and :func:`~ddim.formats.checkpoint.load_checkpoint` judge a file
alike. Every error names the file and the field.

The ``sha256`` of format version 1 covers the tensors only; from version 2 it also covers
the metadata that defines the model (``model_config`` and ``data_shape``, see
:func:`model_description`), so an edited description fails like a flipped bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ddim.checks import is_int
from ddim.models.unet import UNet, UNetConfig

FORMAT = "ddim-checkpoint"
FORMAT_VERSION = 2
BETAS_KEY = "schedule.betas"
_MAX_LISTED = 8
_TENSORS_A_BLOCK = 10  # the weights and biases of a ResnetBlock's two norms, convs, temb_proj
_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2,
    "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CheckpointError(ValueError):
    """A weight file is missing pieces, corrupt, or does not fit the model it describes."""


def read_header(path: Path, raw: bytes) -> tuple[dict[str, Any], int]:
    """The JSON header at the start of the safetensors bytes ``raw`` (its tensor entries
    checked: a known dtype, a shape, and data offsets that hold exactly that many bytes),
    and the length of the data section it describes."""
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        if n > len(raw) - 8:
            raise ValueError(f"header of {n} bytes is longer than the file")
        header = json.loads(raw[8 : 8 + n])
        if not isinstance(header, dict):
            raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
        data_len = max(
            (_entry_end(k, v) for k, v in header.items() if k != "__metadata__"), default=0
        )
    except Exception as e:  # any malformed header is the same problem to the user
        raise CheckpointError(f"{path} is truncated or not a safetensors file ({e})") from None
    return header, data_len


def _entry_end(name: str, entry: Any) -> int:
    """Where the data of the tensor entry ``name`` ends; a ValueError if the entry is malformed."""
    if not isinstance(entry, dict):
        raise ValueError(f"tensor {name} is described by a JSON {type(entry).__name__}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if entry.get("dtype") not in _ITEMSIZE or not _ints(shape, 0):
        raise ValueError(f"tensor {name} has dtype {entry.get('dtype')!r} and shape {shape!r}")
    if not (_ints(offsets, 0) and len(offsets) == 2 and offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name} has data offsets {offsets!r}")
    if offsets[1] - offsets[0] != math.prod(shape) * _ITEMSIZE[entry["dtype"]]:
        raise ValueError(f"tensor {name} of shape {shape} does not fill its data offsets")
    return offsets[1]


def _ints(value: Any, minimum: int) -> bool:
    """``value`` is a list of integers (not bools), each at least ``minimum``."""
    return isinstance(value, list) and all(is_int(v) and v >= minimum for v in value)


def describe(path: Path, header: Mapping[str, Any]) -> dict[str, Any]:
    """The checked self-description of a checkpoint from its header (see the module
    docstring): ``format_version``, ``ddim_version``, ``model_config`` (a dict, every field
    filled in), ``schedule`` (dict), ``data_shape`` (list), ``step`` (int), ``extra``
    (dict) and ``sha256``; otherwise a :class:`CheckpointError` naming the file and field."""
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a ddim checkpoint")

    def field(name: str, parse: Callable[[str], Any]) -> Any:
        raw = meta.get(name)
        try:
            if not isinstance(raw, str):
                raise ValueError("is missing" if raw is None else "is not a string")
            return parse(raw)
        except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
            raise CheckpointError(f"{path} has damaged metadata: {name} {e}") from None

    version = field("format_version", lambda s: _number(s, 1))
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}; this ddim reads up to {FORMAT_VERSION}"
        )
    config = field("model_config", _config)
    described = {
        "format_version": version,
        "ddim_version": field("ddim_version", str),
        "model_config": config.to_dict(),
        "schedule": field("schedule", lambda s: _json(s, dict)),
        "data_shape": field("data_shape", lambda s: _data_shape(_json(s, list), config)),
        "step": field("step", lambda s: _number(s, 0)),
        "extra": field("extra", lambda s: _json(s, dict)),
        "sha256": field("sha256", _sha256),
    }
    _check_tensors(path, header, config, described["schedule"])
    return described


def _json(text: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"is not valid JSON ({e})") from None
    if not isinstance(value, kind):
        name = {dict: "object", list: "array"}[kind]
        raise ValueError(f"must be a JSON {name}, got {json.dumps(value)[:80]}")
    return value


def _config(text: str) -> UNetConfig:
    fields = _json(text, dict)
    try:
        return UNetConfig.from_dict(fields)
    except ValueError as e:
        raise ValueError(f"does not describe a U-Net ({e})") from None


def _number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, got {text[:80]!r}") from None
    if value < minimum:
        raise ValueError(f"must be at least {minimum}, got {value}")
    return value


def _sha256(text: str) -> str:
    if not _SHA256.fullmatch(text):
        raise ValueError(f"must be 64 hexadecimal digits, got {text[:80]!r}")
    return text


def _data_shape(shape: list[Any], config: UNetConfig) -> list[int]:
    """``shape`` if it is the ``(C, H, W)`` that ``config`` takes."""
    expected = [config.in_channels, config.image_size, config.image_size]
    if shape != expected or not _ints(shape, 1):
        raise ValueError(f"{json.dumps(shape)[:80]} is not the model's {expected} (C, H, W)")
    return shape


def _check_tensors(
    path: Path, header: Mapping[str, Any], config: UNetConfig, schedule: Mapping[str, Any]
) -> None:
    """The betas and both sets of weights in ``header`` against the description."""
    betas = header.get(BETAS_KEY)
    if betas is None or len(betas["shape"]) != 1 or betas["shape"][0] < 1:
        raise CheckpointError(f"{path} has no {BETAS_KEY} tensor of shape (T,)")
    steps = schedule.get("num_timesteps", betas["shape"][0])
    if steps != betas["shape"][0]:
        raise CheckpointError(
            f"{path} has damaged metadata: schedule num_timesteps {json.dumps(steps)[:80]} "
            f"is not the {betas['shape'][0]} betas of {BETAS_KEY}"
        )
    for which in ("ema", "model"):
        shapes = {
            k[len(which) + 1 :]: tuple(v["shape"])
            for k, v in header.items()
            if k.startswith(f"{which}.")
        }
        if which == "ema" or shapes:
            check_shapes(config, shapes, f"{which} weights in {path}")


def check_shapes(config: UNetConfig, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise :class:`CheckpointError` listing the missing, unexpected and mis-shaped keys of
    a state dict, given as its tensors' ``shapes``, for a U-Net built from ``config``."""
    blocks = len(config.ch_mult) * (2 * config.num_res_blocks + 1) + 2
    if _TENSORS_A_BLOCK * blocks > len(shapes) + _TENSORS_A_BLOCK * _MAX_LISTED:
        raise CheckpointError(  # far too few tensors: do not even build that network
            f"{source} do not fit the U-Net config: its {blocks} residual blocks need "
            f"{_TENSORS_A_BLOCK * blocks} tensors or more, there are {len(shapes)}"
        )
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in UNet(config).state_dict().items()}
    except (RuntimeError, OverflowError, TypeError) as e:  # widths that overflow int64
        raise CheckpointError(
            f"{source} do not fit the U-Net config, which is unbuildable ({e})"
        ) from None
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    bad_shape = [
        f"{k} {shapes[k]} != {expected[k]}"
        for k in sorted(set(expected) & set(shapes))
        if shapes[k] != expected[k]
    ]
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:_MAX_LISTED])}"
        + (", ..." if len(items) > _MAX_LISTED else "")
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", bad_shape),
        )
        if items
    ]
    if problems:
        raise CheckpointError(f"{source} do not fit the U-Net config: " + "; ".join(problems))


def model_description(config: UNetConfig, data_shape: list[int]) -> dict[str, Any]:
    """The metadata that defines the model, which a version-2 ``sha256`` covers."""
    return {"model_config": config.to_dict(), "data_shape": list(data_shape)}


def digest(
    tensors: Mapping[str, torch.Tensor], description: Mapping[str, Any] | None = None
) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in key order, then
    (format version 2) over ``description`` (:func:`model_description`) as canonical JSON."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    if description is not None:
        text = json.dumps(dict(description), sort_keys=True, separators=(",", ":"))
        h.update(f"description|{text}".encode())
    return h.hexdigest()
