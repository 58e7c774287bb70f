"""Latent files: the ``x_T`` of encoded images with the images they came from.

Two formats, picked by the extension:

- ``.npz``: float32 array ``latents`` ``(N, C, H, W)`` and string array ``sources``;
- ``.pt``: ``{"latents": Tensor, "sources": list[str]}``, loadable with
  ``torch.load(path, weights_only=True)``.

An exact solver's latent (:class:`~ddim.latent.CoupledLatent`) adds its second half,
``latents_second``, and the solver it belongs to, ``solver``, in either format.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ddim.formats.atomic import atomic_write_bytes
from ddim.latent import CoupledLatent

SUFFIXES = (".npz", ".pt")


def _suffix(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"latent file {path} must end with .npz or .pt")
    return suffix


def save_latents(
    path: str | os.PathLike[str],
    latents: torch.Tensor | CoupledLatent,
    sources: Sequence[str],
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write latents and their source labels atomically (format by extension), in ``dtype``
    (float64 keeps an exact solver's latent exact)."""
    if len(sources) != latents.shape[0]:
        raise ValueError(f"{len(sources)} sources for {latents.shape[0]} latents")
    halves = [latents.first, latents.second] if isinstance(latents, CoupledLatent) else [latents]
    values = [h.detach().to("cpu", dtype) for h in halves]
    fields: dict[str, object] = {"latents": values[0]}
    if isinstance(latents, CoupledLatent):
        fields.update(latents_second=values[1], solver=latents.solver)
    buffer = io.BytesIO()
    if _suffix(path) == ".npz":
        arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else np.array(v)
                  for k, v in fields.items()}  # fmt: skip
        np.savez(buffer, **arrays, sources=np.array(list(sources), dtype=str))
    else:
        torch.save({**fields, "sources": list(sources)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_latents(path: str | os.PathLike[str]) -> tuple[torch.Tensor | CoupledLatent, list[str]]:
    """Read what :func:`save_latents` wrote (no pickles are executed)."""
    if _suffix(path) == ".npz":
        with np.load(path, allow_pickle=False) as f:
            fields = {k: f[k] for k in f.files}
        sources = [str(s) for s in fields.pop("sources")]
        fields = {k: str(v) if k == "solver" else torch.from_numpy(v) for k, v in fields.items()}
    else:
        fields = torch.load(path, map_location="cpu", weights_only=True)
        sources = list(fields.pop("sources"))
    if "solver" not in fields:
        return fields["latents"], sources
    return CoupledLatent(fields["solver"], fields["latents"], fields["latents_second"]), sources
