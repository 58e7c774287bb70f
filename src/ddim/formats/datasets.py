"""Training data sets: which one a config names, opened as an :class:`ImageSet`.

A :class:`DataConfig` names an image folder (read lazily), a packed set
(:mod:`ddim.formats.packed`), MNIST idx files, CIFAR-10 python batches, an ``.npz`` array
or scikit-learn's bundled 8x8 digits. :func:`open_image_set` opens it as uint8 images
(the small sets in memory, the folders and packs image by image), takes the configured
index slice and checks the image shape; :func:`load_dataset` gives the whole set as
float32 ``(N, C, H, W)`` in ``[-1, 1]`` for the small uses that want it at once.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ddim.checks import dataclass_kwargs, is_int
from ddim.formats.archives import (
    load_mnist_labels,
    load_npz_labels,
    read_cifar10,
    read_mnist,
    read_npz,
)
from ddim.formats.image_sets import (
    ArraySet,
    FolderScan,
    FolderSet,
    ImageSet,
    Reading,
    scan_folder,
    to_model_range,
)
from ddim.formats.packed import PackedSet
from ddim.names import DATA_KINDS, LABELLED_KINDS, PREPROCESSINGS

PathLike = str | os.PathLike
#: ``data.labels`` of a folder: the class subfolders (torchvision's ``ImageFolder``).
FOLDER_LABELS = "folders"


# ---------------------------------------------------------------- image folders


def load_image_folder(path: PathLike, image_size: int, channels: int) -> Tensor:
    """Every .png/.jpg/.jpeg/.webp under ``path`` (recursive, sorted by relative path), as
    float32 in ``[-1, 1]``; an unreadable file is an error.

    Images are converted to L (``channels=1``) or RGB (``channels=3``), centre-cropped to a
    square and resized with Pillow's bicubic filter to ``image_size``.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    reading = Reading(image_size, channels, "center-crop")
    images = FolderSet(scan_folder(path, reading, strict=True), reading)
    return to_model_range(images.batch(torch.arange(len(images))))


# ---------------------------------------------------------------- scikit-learn digits


def load_digit_labels() -> Tensor:
    """The class (0..9) of each of scikit-learn's 1797 digits, as a LongTensor."""
    from sklearn.datasets import load_digits as sklearn_digits

    return torch.from_numpy(sklearn_digits().target).to(torch.long)


def load_digits(image_size: int = 8) -> Tensor:
    """scikit-learn's bundled 1797 8x8 digits (values 0..16): ``(1797, 1, S, S)``.

    Values map linearly to ``[-1, 1]`` (``v / 8 - 1``); other sizes than 8 are resized
    with antialiased bicubic interpolation and clamped back into ``[-1, 1]``.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn") from e
    images = torch.from_numpy(sklearn_digits().images).to(torch.float32)[:, None] / 8.0 - 1.0
    if image_size != 8:
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bicubic", antialias=True
        ).clamp_(-1.0, 1.0)
    return images


# ---------------------------------------------------------------- config and dispatch


@dataclass(frozen=True)
class DataConfig:
    """Which data set to open and how.

    ``kind`` is one of ``folder``, ``packed``, ``mnist``, ``cifar10``, ``npz``, ``digits``
    (the only one without a ``path``). ``start``/``stop`` slice the images like
    ``x[start:stop]`` (the bundled MNIST model trains on ``[0, 9000)``); ``key`` picks the
    array of an npz. ``labels`` says where the class labels are, for class-conditional
    training: ``folders`` (class subfolders) for ``folder``, the idx1 labels file for
    ``mnist``, the name of the integer array in the same file for ``npz``; ``digits`` and a
    pack made with labels carry their own and need none.

    A folder's images are prepared as ``preprocess`` says (:mod:`ddim.formats.preprocess`);
    a pack was prepared when it was made. ``strict`` makes an unreadable image in a folder
    an error instead of a skipped file. ``workers`` is the number of processes that decode
    a folder or pack during training (``"auto"``: chosen from the machine's cores; in-memory
    kinds need none). ``random_flip`` mirrors images per training step.
    """

    kind: str
    image_size: int
    channels: int
    path: str | None = None
    random_flip: bool = False
    start: int | None = None
    stop: int | None = None
    key: str | None = None
    labels: str | None = None
    preprocess: str = "center-crop"
    strict: bool = False
    workers: int | str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(
                f"DataConfig.kind must be one of {', '.join(DATA_KINDS)}: {self.kind!r}"
            )
        if self.path is not None:
            object.__setattr__(self, "path", os.fspath(self.path))
        if (self.path is None) != (self.kind == "digits"):
            need = "takes no path" if self.kind == "digits" else "needs a path"
            raise ValueError(f"DataConfig kind {self.kind!r} {need}")
        if not is_int(self.image_size) or self.image_size < 1:
            raise ValueError(f"DataConfig.image_size must be positive, got {self.image_size!r}")
        if self.channels not in (1, 3) or not is_int(self.channels):
            raise ValueError(f"DataConfig.channels must be 1 or 3, got {self.channels!r}")
        for name in ("random_flip", "strict"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DataConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("start", "stop"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 0):
                raise ValueError(f"DataConfig.{name} must be a non-negative integer, got {value!r}")
        if self.start is not None and self.stop is not None and self.start >= self.stop:
            raise ValueError(f"DataConfig.start={self.start} must be below stop={self.stop}")
        if self.key is not None and self.kind != "npz":
            raise ValueError(f"DataConfig.key applies only to kind 'npz', not {self.kind!r}")
        if self.labels is not None and self.kind not in LABELLED_KINDS:
            raise ValueError(
                f"DataConfig.labels applies only to kinds {', '.join(LABELLED_KINDS)}, "
                f"not {self.kind!r}"
            )
        if self.kind == "folder" and self.labels not in (None, FOLDER_LABELS):
            raise ValueError(
                f"DataConfig.labels of a folder must be {FOLDER_LABELS!r} (class subfolders), "
                f"got {self.labels!r}"
            )
        if self.labels is not None:
            object.__setattr__(self, "labels", os.fspath(self.labels))
        if self.preprocess not in PREPROCESSINGS:
            raise ValueError(
                f"DataConfig.preprocess must be one of {', '.join(PREPROCESSINGS)}: "
                f"{self.preprocess!r}"
            )
        if self.workers != "auto" and (not is_int(self.workers) or self.workers < 0):
            raise ValueError(
                f"DataConfig.workers must be 'auto' or a non-negative integer, got {self.workers!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict that :meth:`from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        """Build a config from a dict; unknown or missing required keys are an error."""
        return cls(**dataclass_kwargs(cls, d, required=("kind", "image_size", "channels")))

    @property
    def reading(self) -> Reading:
        """How a folder's images become pixels."""
        return Reading(self.image_size, self.channels, self.preprocess)


def decode_workers(cfg: DataConfig) -> int:
    """The processes that decode ``cfg``'s images: none for the kinds held in memory; else
    ``cfg.workers``, where ``"auto"`` is one per core but one (left to the training step),
    at most 8, at least 1."""
    if cfg.kind not in ("folder", "packed"):
        return 0
    if cfg.workers != "auto":
        return int(cfg.workers)
    return auto_workers()


def auto_workers() -> int:
    """Decoding processes by default: one per core but one, at most 8, at least 1."""
    return min(8, max(1, (os.cpu_count() or 1) - 1))


def _in_memory(cfg: DataConfig) -> Tensor:
    if cfg.kind == "mnist":
        return torch.from_numpy(np.require(read_mnist(cfg.path), requirements=["C", "W"]))
    if cfg.kind == "cifar10":
        return torch.from_numpy(read_cifar10(cfg.path))
    if cfg.kind == "npz":
        return read_npz(cfg.path, cfg.key)
    return load_digits(cfg.image_size)


def open_image_set(
    cfg: DataConfig, num_classes: int | None = None, *, workers: int = 0
) -> tuple[ImageSet, FolderScan | None]:
    """The configured images (with their labels when ``num_classes`` is given: a
    conditional run), sliced and checked, and for a folder what its scan found. ``workers``
    processes decode a folder's scan."""
    scan = None
    labelled = num_classes is not None
    if labelled and cfg.labels is None and cfg.kind not in ("digits", "packed"):
        kinds = ", ".join(LABELLED_KINDS)
        raise ValueError(
            f"class-conditional training needs labels: set data.labels (kinds {kinds}) "
            f"or use kind 'digits' or a pack made with labels"
        )
    if cfg.kind == "folder":
        scan = scan_folder(cfg.path, cfg.reading, labelled=labelled, strict=cfg.strict,
                           workers=workers)  # fmt: skip
        images: ImageSet = FolderSet(scan, cfg.reading)
    elif cfg.kind == "packed":
        images = PackedSet(cfg.path)
        if labelled and images.labels is None:
            raise ValueError(
                f"packed set {cfg.path} holds no labels; pack its folder again with --labels"
            )
    else:
        x = _in_memory(cfg)
        y = _labels(cfg, len(x)) if labelled else None
        images = ArraySet(x, cfg.path or "scikit-learn digits", y)
    images = _sliced(cfg, images)
    _checked(cfg, images)
    if labelled:
        _check_labels(images, num_classes)
    return images, scan


def _labels(cfg: DataConfig, n: int) -> Tensor:
    if cfg.kind == "digits":
        y = load_digit_labels()
    elif cfg.kind == "mnist":
        y = load_mnist_labels(cfg.labels)
    else:
        y = load_npz_labels(cfg.path, cfg.labels)
    if len(y) != n:
        raise ValueError(f"{cfg.labels} holds {len(y)} labels for the {n} images of {cfg.path}")
    return y


def _check_labels(images: ImageSet, num_classes: int) -> None:
    y = images.labels
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"the labels of {images.source} lie in {int(y.min())}..{int(y.max())}, outside "
            f"0..{num_classes - 1} (model.num_classes={num_classes})"
        )


def load_dataset(cfg: DataConfig) -> Tensor:
    """The configured images, sliced and checked, as float32 in ``[-1, 1]`` all at once."""
    images = open_image_set(cfg)[0]
    return to_model_range(images.batch(torch.arange(len(images)))).contiguous()


def load_labelled_dataset(cfg: DataConfig, num_classes: int) -> tuple[Tensor, Tensor]:
    """The images of :func:`load_dataset` and their class labels, a LongTensor ``(N,)``
    checked to lie in ``0 .. num_classes - 1``."""
    images = open_image_set(cfg, num_classes)[0]
    x = to_model_range(images.batch(torch.arange(len(images)))).contiguous()
    return x, images.labels.contiguous()


def _sliced(cfg: DataConfig, images: ImageSet) -> ImageSet:
    n = len(images)
    if cfg.stop is not None and cfg.stop > n:
        raise ValueError(f"DataConfig.stop={cfg.stop} exceeds the {n} images in {images.source}")
    if cfg.start is not None and cfg.start >= n:
        raise ValueError(f"DataConfig.start={cfg.start} is past the {n} images in {images.source}")
    return images.sliced(cfg.start, cfg.stop)


def _checked(cfg: DataConfig, images: ImageSet) -> None:
    expected = (cfg.channels, cfg.image_size, cfg.image_size)
    if tuple(images.shape) != expected:
        raise ValueError(
            f"images in {images.source} have shape (C, H, W) = {tuple(images.shape)}, "
            f"config expects {expected}"
        )


def flip_mask(n: int, generator: torch.Generator) -> Tensor:
    """Which of ``n`` images to mirror: one uniform draw each on the generator's device,
    ``< 1/2``; so the flips depend only on the generator state and ``n``."""
    return torch.rand(n, generator=generator, device=generator.device) < 0.5


def apply_flip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right the images of ``(B, C, H, W)`` ``x`` where ``mask`` is true."""
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(-1), x)


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image of ``x`` left-right with probability 1/2, drawn from ``generator``
    (:func:`flip_mask`)."""
    if x.ndim != 4:
        raise ValueError(f"random_flip expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    return apply_flip(x, flip_mask(x.shape[0], generator))
