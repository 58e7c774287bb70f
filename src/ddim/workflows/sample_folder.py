"""Many samples as a folder of PNGs: split over torchrun processes, resumed after a kill.

Image ``i`` is ``folder/{i:06d}.png``, drawn from seed ``seed + i``: the folder layout that
pytorch-fid, clean-fid and torch-fidelity read as it is. The ``n`` indices are cut into
the batches ``[k B, (k + 1) B)`` of a one-process run, and process ``r`` of ``W`` takes
batches ``r, r + W, ...``; every batch holds the same images whatever ``W`` is, so even a
model whose rounding depends on the batch composition gives the files of one process.

``ddim-sample.json`` records what defines the images: the settings, and digests of the
model's weights and schedule (and of a guiding classifier's weights), not the paths they
came from. A rerun with the same record skips the batches whose files all exist (each PNG
is written atomically, so a file that exists is complete) and makes the others again,
writing only their missing files; a rerun with another record (other settings, or other
weights at the same path) is refused unless ``overwrite``, which first removes the
numbered images and the record of the earlier run: the folder holds exactly one run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from ddim import distributed
from ddim.formats.atomic import atomic_write_text, refuse_overwrite
from ddim.formats.images import png_names, save_npz, save_png_folder
from ddim.guidance import Classifier
from ddim.sampling import Callback, Model, SamplerOptions
from ddim.schedule import NoiseSchedule
from ddim.workflows.generation import DEFAULTS, generate

MANIFEST = "ddim-sample.json"
_NUMBERED = re.compile(r"\d{6,}\.png")  # the names png_names gives


def rank_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` batches of ``n`` images that process ``rank`` makes."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(rank * batch_size, n, world_size * batch_size)
    return [(a, min(a + batch_size, n)) for a in starts]


def claim(folder: Path, n: int, manifest: Mapping[str, Any], overwrite: bool) -> bool:
    """Check that ``folder`` may receive these samples and record ``manifest`` there;
    whether finished images may be kept (a resumed run of the same settings)."""
    path = folder / MANIFEST
    if path.is_file() and not overwrite:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old != dict(manifest):
            differ = sorted(
                k for k in {*manifest, *(old or {})} if (old or {}).get(k) != manifest.get(k)
            )
            raise FileExistsError(
                f"{folder} holds samples made with other settings or weights "
                f"({', '.join(differ)}); pass --force to replace them"
            )
        return True
    if overwrite:
        clear(folder)
    else:
        for name in png_names(n):
            refuse_overwrite(folder / name, overwrite, hint="pass --force to overwrite it")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(dict(manifest), indent=1) + "\n")
    return False


def clear(folder: Path) -> None:
    """Remove the record and then the numbered images of an earlier run from ``folder``
    (other files stay); killed halfway, it leaves images without a record, which a rerun
    refuses to mix with its own."""
    if (folder / MANIFEST).is_file():
        (folder / MANIFEST).unlink()
    if folder.is_dir():
        for path in folder.iterdir():
            if _NUMBERED.fullmatch(path.name) and path.is_file():
                path.unlink()


def tensors_sha256(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 of ``tensors`` in order: each one's dtype, shape and values, whatever its
    device or memory layout."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def weights_sha256(model: object) -> str | None:
    """:func:`tensors_sha256` of ``model``'s state dict (its values only, so channels-last
    and ``torch.compile`` wrappers do not change it); ``None`` for a plain callable."""
    state_dict = getattr(model, "state_dict", None)
    return None if state_dict is None else tensors_sha256(state_dict().values())


def sample_to_folder(
    model: Model,
    sched: NoiseSchedule,
    n: int,
    shape: Sequence[int],
    folder: str | os.PathLike[str],
    *,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    options: SamplerOptions = DEFAULTS,
    labels: torch.Tensor | None = None,
    classifier: Classifier | None = None,
    manifest: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    callback: Callback | None = None,
) -> tuple[int, int]:
    """Write images ``0 .. n-1`` to ``folder`` with this process's share of the work;
    image ``i`` of class ``labels[i]`` if given (guided as ``options`` say).

    The record holds ``n``, ``seed``, ``batch_size``, ``options``, the labels and the
    digests of the model's weights (:func:`weights_sha256`; ``None`` for a plain callable,
    whose identity ``manifest`` must then record), its betas and the classifier's weights;
    ``manifest`` adds settings to record. Every process of a torchrun job calls this.
    Returns ``(written, kept)``: the files all processes wrote and those they found finished.
    """
    folder = Path(folder)
    rank, world_size = distributed.world()
    keep = False
    if rank == 0:
        record = {
            "n": n, "seed": seed, "batch_size": batch_size, "shape": list(shape),
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(options).items()},
            "labels": None if labels is None else labels.tolist(),
            "model": weights_sha256(model), "betas": tensors_sha256([sched.betas]),
            "classifier": weights_sha256(classifier),
            **dict(manifest or {}),
        }  # fmt: skip
        keep = claim(folder, n, record, overwrite)
    if world_size > 1:
        flag = [keep]
        dist.broadcast_object_list(flag, src=0)
        keep = flag[0]
    written = kept = 0
    for start, stop in rank_batches(n, batch_size, rank, world_size):
        names = png_names(stop - start, start)
        todo = [i for i, name in enumerate(names) if not (keep and (folder / name).is_file())]
        kept += len(names) - len(todo)
        if not todo:
            continue
        x = generate(
            model, sched, stop - start, shape, seed=seed + start, batch_size=batch_size,
            device=device, options=options, callback=callback, classifier=classifier,
            labels=None if labels is None else labels[start:stop],
        )  # fmt: skip
        for i in todo:
            save_png_folder(folder, x[i : i + 1], start=start + i)
        written += len(todo)
    if world_size > 1:
        counts: list[Any] = [None] * world_size
        dist.all_gather_object(counts, (written, kept))
        written, kept = (sum(c[k] for c in counts) for k in (0, 1))
    return written, kept


def pack_npz(folder: str | os.PathLike[str], n: int, path: str | os.PathLike[str]) -> None:
    """Images ``0 .. n-1`` of ``folder`` as one ``.npz`` (uint8 ``(N, H, W, C)``), exactly the
    array :func:`ddim.formats.images.save_npz` writes for them (PNG is lossless)."""
    arrays = []
    for name in png_names(n):
        with Image.open(Path(folder) / name) as img:
            array = np.asarray(img, dtype=np.uint8)
        arrays.append(array[..., None] if array.ndim == 2 else array)
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1
    save_npz(path, batch)
