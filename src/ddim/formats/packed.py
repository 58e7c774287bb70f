"""Packed image sets: a folder's images decoded once into memory-mapped uint8 shards.

``ddim data pack FOLDER --size 64 --out DIR`` writes ``DIR`` with:

- ``images-00000.npy``, ``images-00001.npy``, ... — uint8 arrays ``(n_k, C, H, W)`` of at
  most :data:`SHARD_BYTES` each, read with ``numpy.load(mmap_mode="r")``, so a training
  process holds only the pages it touches and reading an image is one copy;
- ``labels.npy`` — int64 class numbers, when the folder was packed with labels;
- ``manifest.json`` — the count, the shape, each file's sha256, the class names, how the
  images were prepared, what the scan skipped, and a digest of the source (every kept
  file's relative path and sha256, in order).

The pack is written into a temporary folder beside ``DIR`` and renamed onto it at the
end, so ``DIR`` is complete or absent. Opening a pack checks the manifest against the
shards' headers and sizes (cheap); :func:`verify_packed` also hashes every byte.

Shards of ``.npy`` rather than tar files: a training step reads images in a random order,
which a memory map serves with one copy and a tar stream cannot without an index.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddim.formats.atomic import atomic_write_text
from ddim.formats.image_sets import FolderScan, ImageSet, Reading, scan_folder

MANIFEST, LABELS = "manifest.json", "labels.npy"
FORMAT, VERSION = "ddim-packed-images", 1
SHARD_BYTES = 1 << 30


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _source_digest(scan: FolderScan) -> str:
    h = hashlib.sha256()
    for file, digest in zip(scan.files, scan.digests or [], strict=True):
        h.update(f"{file.relative_to(scan.root).as_posix()}\0{digest}\n".encode())
    return h.hexdigest()


def pack_folder(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    reading: Reading,
    *,
    labelled: bool = False,
    strict: bool = False,
    workers: int = 0,
    shard_images: int | None = None,
) -> dict[str, Any]:
    """Pack the readable images of ``folder`` into ``out`` (which must not exist yet);
    returns the manifest. ``shard_images`` caps the images per shard (default: as many
    as fit in :data:`SHARD_BYTES`)."""
    target = Path(out)
    if target.exists():
        raise ValueError(f"{target} already exists; remove it or pick another --out")
    scan = scan_folder(folder, reading, labelled=labelled, strict=strict, workers=workers,
                       digest=True)  # fmt: skip
    shape = (reading.channels, reading.image_size, reading.image_size)
    per_shard = shard_images or max(1, SHARD_BYTES // int(np.prod(shape)))
    tmp = target.parent / f".tmp-{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        shards = []
        for k, start in enumerate(range(0, len(scan.files), per_shard)):
            files = scan.files[start : start + per_shard]
            name = f"images-{k:05d}.npy"
            array = np.lib.format.open_memmap(tmp / name, "w+", np.uint8, (len(files), *shape))
            for i, file in enumerate(files):
                array[i] = reading.pixels(file)
            array.flush()
            del array
            shards.append({"file": name, "count": len(files), "sha256": _sha256(tmp / name)})
        labels = None
        if scan.labels is not None:
            np.save(tmp / LABELS, np.asarray(scan.labels, dtype=np.int64))
            classes = list(scan.classes)
            labels = {"file": LABELS, "sha256": _sha256(tmp / LABELS), "classes": classes}
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "count": len(scan.files),
            "shape": list(shape),
            "preprocess": reading.preprocess,
            "shards": shards,
            "labels": labels,
            "source": {
                "folder": str(Path(folder).resolve()),
                "digest": _source_digest(scan),
                "found": scan.found,
                "skipped": [[f.relative_to(scan.root).as_posix(), why] for f, why in scan.skipped],
            },
        }
        manifest["digest"] = _manifest_digest(manifest)
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _manifest_digest(manifest: dict[str, Any]) -> str:
    """A digest of what the pack holds: its shape and every data file's sha256."""
    parts = [manifest["shape"], [s["sha256"] for s in manifest["shards"]]]
    parts.append(None if manifest["labels"] is None else manifest["labels"]["sha256"])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the pack in ``folder``, checked for its format and fields."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder} is not a packed image set: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"format {manifest.get('format')!r} {manifest.get('version')!r}")
        shards = [(str(s["file"]), int(s["count"]), str(s["sha256"])) for s in manifest["shards"]]
        shape = tuple(int(v) for v in manifest["shape"])
        count = int(manifest["count"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a manifest of a packed image set ({e})") from None
    if len(shape) != 3 or sum(n for _, n, _ in shards) != count:
        raise ValueError(f"{path} does not add up: its shards hold other than {count} images")
    if manifest.get("digest") != _manifest_digest(manifest):
        raise ValueError(f"{path} has been edited: its digest does not match its entries")
    return manifest


class PackedSet(ImageSet):
    """A packed set, its shards memory-mapped; ``self[i]`` copies one image out."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        root = Path(folder)
        manifest = read_manifest(root)
        self.shape = tuple(manifest["shape"])
        self.root, self.source, self.digest = root, str(root), manifest["digest"]
        self._shards, ends = [], []
        for entry in manifest["shards"]:
            self._shards.append(self._open(root / entry["file"], (entry["count"], *self.shape)))
            ends.append((ends[-1] if ends else 0) + entry["count"])
        self._ends = np.asarray(ends)
        labels, classes = None, ()
        if manifest["labels"] is not None:
            array = self._open(root / manifest["labels"]["file"], (manifest["count"],), np.int64)
            labels, classes = torch.from_numpy(np.array(array)), manifest["labels"]["classes"]
        super().__init__(manifest["count"], labels, classes)
        self.preprocess = manifest["preprocess"]

    def _open(self, path: Path, shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
        what = f"packed set {self.root}: {path.name}"
        if not path.is_file():
            raise ValueError(f"{what} is missing")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"{what} cannot be read ({e})") from None
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(
                f"{what} holds {array.dtype} {array.shape}, the manifest says "
                f"{np.dtype(dtype)} {shape}"
            )
        return array

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (for a worker process started by spawn) without the maps, which would
        pickle as copies of the whole data; the worker maps the shards again."""
        return {**self.__dict__, "_shards": [(s.filename, s.shape) for s in self._shards]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._shards = [np.load(path, mmap_mode="r") for path, _ in self._shards]

    def _read(self, row: int) -> Tensor:
        k = int(np.searchsorted(self._ends, row, side="right"))
        start = int(self._ends[k - 1]) if k else 0
        return torch.from_numpy(np.array(self._shards[k][row - start]))

    def _content(self) -> str:
        return self.digest


def verify_packed(folder: str | os.PathLike[str]) -> int:
    """Hash every file of the pack in ``folder`` against its manifest; its image count, or a
    ValueError naming the first file that differs."""
    root = Path(folder)
    manifest = read_manifest(root)
    PackedSet(root)
    entries = list(manifest["shards"]) + ([manifest["labels"]] if manifest["labels"] else [])
    for entry in entries:
        if _sha256(root / entry["file"]) != entry["sha256"]:
            raise ValueError(f"packed set {root}: {entry['file']} differs from its manifest")
    return int(manifest["count"])
