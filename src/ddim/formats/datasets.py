"""Image data sets as float32 tensors ``(N, C, H, W)`` scaled to ``[-1, 1]``.

Every loader returns the whole set in memory: image folders, MNIST idx files, CIFAR-10
python batches, ``.npz`` arrays and scikit-learn's bundled 8x8 digits. A
:class:`DataConfig` names one of them, and :func:`load_dataset` loads it, takes the
configured index slice and checks the image shape.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ddim.checks import dataclass_kwargs, is_int
from ddim.formats.archives import (
    load_cifar10,
    load_mnist,
    load_mnist_labels,
    load_npz,
    load_npz_labels,
    uint8_to_tensor,
)
from ddim.formats.images import IMAGE_EXTENSIONS, find_files, opened_image
from ddim.names import DATA_KINDS, LABELLED_KINDS

PathLike = str | os.PathLike


# ---------------------------------------------------------------- image folders


def _read_image(file: Path, image_size: int, mode: str) -> np.ndarray:
    """One image as uint8 ``(H, W)`` or ``(H, W, 3)``: centre square crop, bicubic resize."""
    with opened_image(file) as img:
        img = img.convert(mode)
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != image_size:
        img = img.resize((image_size, image_size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def load_image_folder(path: PathLike, image_size: int, channels: int) -> Tensor:
    """Every .png/.jpg/.jpeg/.webp under ``path`` (recursive, sorted by relative path).

    Images are converted to L (``channels=1``) or RGB (``channels=3``), centre-cropped to a
    square and resized with Pillow's bicubic filter to ``image_size``.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a directory")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    files = find_files(root, IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no {'/'.join(IMAGE_EXTENSIONS)} images found in folder {root}")
    out = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    mode = "L" if channels == 1 else "RGB"
    for i, file in enumerate(files):
        out[i] = _read_image(file, image_size, mode).reshape(image_size, image_size, channels)
    return uint8_to_tensor(out.transpose(0, 3, 1, 2))


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
    """Which data set to load and how.

    ``kind`` is one of ``folder``, ``mnist``, ``cifar10``, ``npz``, ``digits`` (the only one
    without a ``path``). ``start``/``stop`` slice the loaded images like ``x[start:stop]``
    (the bundled MNIST model trains on ``[0, 9000)``); ``key`` picks the array of an npz.
    ``labels`` says where the class labels are, for class-conditional training: the idx1
    labels file for ``mnist``, the name of the integer array in the same file for ``npz``;
    ``digits`` carries its labels and needs none.
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
        if not isinstance(self.random_flip, bool):
            raise ValueError(f"DataConfig.random_flip must be a bool, got {self.random_flip!r}")
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
        if self.labels is not None:
            object.__setattr__(self, "labels", os.fspath(self.labels))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict that :meth:`from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        """Build a config from a dict; unknown or missing required keys are an error."""
        return cls(**dataclass_kwargs(cls, d, required=("kind", "image_size", "channels")))


def _load(cfg: DataConfig) -> Tensor:
    if cfg.kind == "folder":
        return load_image_folder(cfg.path, cfg.image_size, cfg.channels)
    if cfg.kind == "mnist":
        return load_mnist(cfg.path)
    if cfg.kind == "cifar10":
        return load_cifar10(cfg.path)
    if cfg.kind == "npz":
        return load_npz(cfg.path, cfg.key)
    return load_digits(cfg.image_size)


def load_dataset(cfg: DataConfig) -> Tensor:
    """Load the configured data, slice ``[start:stop]`` and check ``(C, H, W)``."""
    return _checked(cfg, _sliced(cfg, _load(cfg)))


def load_labelled_dataset(cfg: DataConfig, num_classes: int) -> tuple[Tensor, Tensor]:
    """The images of :func:`load_dataset` and their class labels, a LongTensor ``(N,)``
    sliced alike and checked to lie in ``0 .. num_classes - 1``."""
    if cfg.labels is None and cfg.kind != "digits":
        kinds = ", ".join(LABELLED_KINDS)
        raise ValueError(
            f"class-conditional training needs labels: set data.labels (kinds {kinds}) "
            f"or use kind 'digits'"
        )
    x = _load(cfg)
    if cfg.kind == "digits":
        y = load_digit_labels()
    elif cfg.kind == "mnist":
        y = load_mnist_labels(cfg.labels)
    else:
        y = load_npz_labels(cfg.path, cfg.labels)
    if len(y) != len(x):
        raise ValueError(
            f"{cfg.labels} holds {len(y)} labels for the {len(x)} images of {cfg.path}"
        )
    y = _sliced(cfg, y)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"the labels of {cfg.path or 'scikit-learn digits'} lie in "
            f"{int(y.min())}..{int(y.max())}, outside 0..{num_classes - 1} "
            f"(model.num_classes={num_classes})"
        )
    return _checked(cfg, _sliced(cfg, x)), y.contiguous()


def _sliced(cfg: DataConfig, x: Tensor) -> Tensor:
    source = cfg.path if cfg.path is not None else "scikit-learn digits"
    if cfg.stop is not None and cfg.stop > len(x):
        raise ValueError(f"DataConfig.stop={cfg.stop} exceeds the {len(x)} images in {source}")
    if cfg.start is not None and cfg.start >= len(x):
        raise ValueError(f"DataConfig.start={cfg.start} is past the {len(x)} images in {source}")
    return x[cfg.start : cfg.stop]


def _checked(cfg: DataConfig, x: Tensor) -> Tensor:
    source = cfg.path if cfg.path is not None else "scikit-learn digits"
    expected = (cfg.channels, cfg.image_size, cfg.image_size)
    if tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"images in {source} have shape (C, H, W) = {tuple(x.shape[1:])}, "
            f"config expects {expected}"
        )
    return x.contiguous()


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image of ``x`` left-right with probability 1/2, drawn from ``generator``.

    One uniform draw per image, made on the generator's device, so the flips depend only
    on the generator state and the batch size.
    """
    if x.ndim != 4:
        raise ValueError(f"random_flip expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
