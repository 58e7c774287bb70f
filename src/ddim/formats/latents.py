"""Latent files: the ``x_T`` of encoded images with the images they came from.

Two formats, picked by the extension:

- ``.npz``: float32 array ``latents`` ``(N, C, H, W)`` and string array ``sources``;
- ``.pt``: ``{"latents": Tensor, "sources": list[str]}``, loadable with
  ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ddim.formats.atomic import atomic_write_bytes

SUFFIXES = (".npz", ".pt")


def _suffix(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"latent file {path} must end with .npz or .pt")
    return suffix


def save_latents(
    path: str | os.PathLike[str], latents: torch.Tensor, sources: Sequence[str]
) -> None:
    """Write latents and their source labels atomically (format by extension)."""
    if len(sources) != latents.shape[0]:
        raise ValueError(f"{len(sources)} sources for {latents.shape[0]} latents")
    buffer = io.BytesIO()
    values = latents.detach().to("cpu", torch.float32)
    if _suffix(path) == ".npz":
        np.savez(buffer, latents=values.numpy(), sources=np.array(list(sources), dtype=str))
    else:
        torch.save({"latents": values, "sources": list(sources)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_latents(path: str | os.PathLike[str]) -> tuple[torch.Tensor, list[str]]:
    """Read what :func:`save_latents` wrote (no pickles are executed)."""
    if _suffix(path) == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return torch.from_numpy(f["latents"]), [str(s) for s in f["sources"]]
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj["latents"], list(obj["sources"])
