"""Training sets read image by image: in memory (small sets), from a folder, or packed.

An :class:`ImageSet` is a map-style :class:`torch.utils.data.Dataset` of uint8 ``(C, H, W)``
images (scikit-learn's digits, whose values are not bytes, are float32 in ``[-1, 1]``),
with its class labels if it has any, and a fingerprint that changes when its content
does. :func:`to_model_range` turns a batch into the model's ``[-1, 1]`` floats, so only
the batch in flight is ever float.

An image folder is listed and every file decoded once when it opens
(:func:`scan_folder`): unreadable or truncated files are skipped and counted, or refused
under ``strict``; after that a folder set holds only the file names. With labels, the
folder follows torchvision's ``ImageFolder`` convention: each subfolder of the root is a
class, numbered in sorted order of the names.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ddim.formats.images import IMAGE_EXTENSIONS, find_files, opened_image
from ddim.formats.preprocess import preprocess

#: How many skipped files a scan names; the rest are counted.
NAMED_SKIPS = 5


def to_model_range(x: Tensor) -> Tensor:
    """uint8 ``0..255`` -> float32 ``[-1, 1]`` (``x / 127.5 - 1``); float input is returned
    as it is (it is already in the model's range)."""
    if x.dtype != torch.uint8:
        return x
    return x.to(torch.float32).div_(127.5).sub_(1.0)


class ImageSet(Dataset):
    """Rows ``rows`` of a set of images; ``self[i]`` is row ``rows[i]``'s image.

    Subclasses read one row with :meth:`_read` and say what they hold in ``source`` (for
    messages) and :meth:`_content` (for the fingerprint).
    """

    source: str
    shape: tuple[int, int, int]

    def __init__(self, n: int, labels: Tensor | None, classes: Sequence[str] = ()) -> None:
        self.rows = range(n)
        self._labels = labels
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tensor:
        return self._read(self.rows[i])

    def _read(self, row: int) -> Tensor:
        raise NotImplementedError

    def _content(self) -> str:
        raise NotImplementedError

    @property
    def labels(self) -> Tensor | None:
        """The class of each image (a LongTensor ``(N,)``), or None for an unlabelled set."""
        if self._labels is None:
            return None
        return self._labels[self.rows.start : self.rows.stop]

    def batch(self, index: Tensor) -> Tensor:
        """The images at positions ``index``, stacked ``(B, C, H, W)``, in this process."""
        return torch.stack([self[i] for i in index.tolist()])

    def sliced(self, start: int | None, stop: int | None) -> ImageSet:
        """The same set restricted to positions ``start:stop`` (like a list slice)."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.rows = self.rows[start:stop]
        return out

    def fingerprint(self) -> str:
        """A digest of what this set holds, in its order, and of its labels."""
        h = hashlib.sha256(self._content().encode())
        h.update(f"{self.rows.start}:{self.rows.stop}".encode())
        if self.labels is not None:
            h.update(self.labels.numpy().tobytes())
        return h.hexdigest()


class ArraySet(ImageSet):
    """A set held whole in memory: ``(N, C, H, W)`` uint8 (or float32 in ``[-1, 1]``)."""

    def __init__(
        self, images: Tensor, source: str, labels: Tensor | None = None,
        classes: Sequence[str] = (),
    ) -> None:  # fmt: skip
        super().__init__(len(images), labels, classes)
        self.images, self.source = images, source
        self.shape = tuple(images.shape[1:])

    def _read(self, row: int) -> Tensor:
        return self.images[row]

    def batch(self, index: Tensor) -> Tensor:
        """The images at positions ``index``, ``(B, C, H, W)``, by one indexing of the
        held tensor; a position outside ``0..len - 1`` is an :class:`IndexError`, as for
        any set (it would otherwise read a row outside this set's slice)."""
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self.rows)):
            raise IndexError(f"positions {index.tolist()} outside a set of {len(self.rows)}")
        return self.images[index + self.rows.start]

    def _content(self) -> str:
        part = self.images[self.rows.start : self.rows.stop].contiguous()
        return hashlib.sha256(part.numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------- image folders


@dataclass(frozen=True)
class Reading:
    """How a folder's images become pixels: the square's side, 1 or 3 channels, and the
    named preprocessing of :mod:`ddim.formats.preprocess`."""

    image_size: int
    channels: int
    preprocess: str

    def pixels(self, file: Path) -> np.ndarray:
        """``file`` decoded and prepared: uint8 ``(C, H, W)``; a ValueError naming it."""
        with opened_image(file) as img:
            try:
                return preprocess(img, self.image_size, self.channels, self.preprocess)
            except ValueError as e:
                raise ValueError(f"cannot prepare image {file}: {e}") from None


@dataclass
class FolderScan:
    """What opening a folder found: the readable files (sorted by relative path), their
    labels, the class names, and the files skipped with the reason for each."""

    root: Path
    files: list[Path]
    labels: list[int] | None
    classes: tuple[str, ...]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    digests: list[str] | None = None

    @property
    def found(self) -> int:
        """How many image files the scan found: those kept and those skipped."""
        return len(self.files) + len(self.skipped)

    def summary(self) -> str:
        """One line: how many images were found, kept and skipped, and the first reasons."""
        where = f"{self.root}: found {self.found} images"
        if self.classes:
            where += f" in {len(self.classes)} classes"
        if not self.skipped:
            return f"{where}, skipped none"
        named = "; ".join(reason for _, reason in self.skipped[:NAMED_SKIPS])
        more = len(self.skipped) - NAMED_SKIPS
        tail = f"; and {more} more" if more > 0 else ""
        return f"{where}, skipped {len(self.skipped)} that cannot be read ({named}{tail})"


def _check_one(reading: Reading, file: Path, digest: bool) -> str | None | tuple[str, str]:
    """The reason ``file`` cannot be used, or None (or, with ``digest``, its sha256)."""
    try:
        reading.pixels(file)
    except ValueError as e:
        return str(e)
    if digest:
        return ("ok", hashlib.sha256(file.read_bytes()).hexdigest())
    return None


def _class_files(root: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """The images under each class subfolder of ``root``, with the classes' numbers."""
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        raise ValueError(
            f"labels from class subfolders: folder {root} holds images outside them "
            f"(e.g. {loose[0].name}); put each image under {root}/<class>/"
        )
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise ValueError(f"labels from class subfolders: folder {root} has no subfolders")
    files, labels = [], []
    for k, name in enumerate(classes):
        found = find_files(root / name, IMAGE_EXTENSIONS)
        files += found
        labels += [k] * len(found)
    return files, labels, classes


def scan_folder(
    root: str | os.PathLike[str],
    reading: Reading,
    *,
    labelled: bool = False,
    strict: bool = False,
    workers: int = 0,
    digest: bool = False,
) -> FolderScan:
    """List the images under ``root`` (recursive) and decode each once, in ``workers``
    processes (0: in this one), to set aside the ones that cannot be read.

    With ``labelled``, labels come from class subfolders (``ImageFolder``'s convention).
    ``strict`` turns the first unreadable file into a ValueError. ``digest`` also records
    each kept file's sha256 (for a packed set's manifest).
    """
    folder = Path(root)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist or is not a directory")
    if labelled:
        files, labels, classes = _class_files(folder)
    else:
        files, labels, classes = find_files(folder, IMAGE_EXTENSIONS), None, ()
    if not files:
        raise ValueError(f"no {'/'.join(IMAGE_EXTENSIONS)} images found in folder {folder}")
    chunk = 64
    if workers > 0:
        with ProcessPoolExecutor(workers) as pool:
            checks = list(pool.map(_check_one, [reading] * len(files), files,
                                   [digest] * len(files), chunksize=chunk))  # fmt: skip
    else:
        checks = [_check_one(reading, f, digest) for f in files]
    kept = [i for i, c in enumerate(checks) if c is None or isinstance(c, tuple)]
    skipped = [(files[i], checks[i]) for i in range(len(files)) if isinstance(checks[i], str)]
    if strict and skipped:
        raise ValueError(f"{skipped[0][1]} (data.strict is on)")
    if not kept:
        raise ValueError(
            f"none of the {len(files)} images in folder {folder} can be read "
            f"(first: {skipped[0][1]})"
        )
    return FolderScan(
        folder,
        [files[i] for i in kept],
        None if labels is None else [labels[i] for i in kept],
        classes,
        skipped,
        [checks[i][1] for i in kept] if digest else None,
    )


class FolderSet(ImageSet):
    """The kept files of a :class:`FolderScan`, each decoded when it is read."""

    def __init__(self, scan: FolderScan, reading: Reading) -> None:
        labels = None if scan.labels is None else torch.tensor(scan.labels, dtype=torch.long)
        super().__init__(len(scan.files), labels, scan.classes)
        self.root, self.reading = scan.root, reading
        self.names = [f.relative_to(scan.root).as_posix() for f in scan.files]
        self.source = str(scan.root)
        self.shape = (reading.channels, reading.image_size, reading.image_size)

    def _read(self, row: int) -> Tensor:
        try:
            return torch.from_numpy(self.reading.pixels(self.root / self.names[row]))
        except ValueError as e:
            raise ValueError(f"{e} (the folder changed after it was scanned)") from None

    def _content(self) -> str:
        """The names, sizes and modification times of the files, and how they are read."""
        listing = []
        for name in self.names[self.rows.start : self.rows.stop]:
            try:
                stat = (self.root / name).stat()
                listing.append([name, stat.st_size, stat.st_mtime_ns])
            except OSError:
                listing.append([name, None, None])
        reading = [self.reading.image_size, self.reading.channels, self.reading.preprocess]
        return json.dumps([reading, listing])
