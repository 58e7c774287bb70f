"""Inpainting masks: ``1`` where a pixel is kept, ``0`` where it is filled in.

A mask is a PNG the size of the images (white keeps, black fills; anything else is refused
as not binary) or one of :data:`NAMED_MASKS`, each named after the region it *fills*:
``bottom-half`` keeps the top half and inpaints the bottom.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddim.formats.images import opened_image
from ddim.names import NAMED_MASKS


def named_mask(name: str, size: int) -> torch.Tensor:
    """The ``(1, size, size)`` float mask called ``name``: 0 on the region it names."""
    keep = torch.ones(1, size, size)
    half, quarter = size // 2, size // 4
    regions = {
        "top-half": (slice(0, half), slice(None)),
        "bottom-half": (slice(half, None), slice(None)),
        "left-half": (slice(None), slice(0, half)),
        "right-half": (slice(None), slice(half, None)),
        "center": (slice(quarter, size - quarter), slice(quarter, size - quarter)),
    }
    if name not in regions:
        raise ValueError(f"unknown mask {name!r}; give a PNG or one of {', '.join(NAMED_MASKS)}")
    rows, cols = regions[name]
    keep[0, rows, cols] = 0.0
    return keep


def read_mask(source: str | os.PathLike[str], size: int) -> torch.Tensor:
    """A named mask, or a black-and-white PNG of ``size x size`` pixels, as ``(1, size, size)``
    with 1 where the image is kept."""
    if str(source) in NAMED_MASKS:
        return named_mask(str(source), size)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"mask {source} is neither a file nor one of {', '.join(NAMED_MASKS)}")

    def check(img: Image.Image) -> None:  # before the pixels are decoded
        if img.size != (size, size):
            width, height = img.size
            raise ValueError(f"mask {path} is {width}x{height}; the images are {size}x{size}")

    with opened_image(path, check) as img:
        pixels = np.asarray(img.convert("L"))
    if not np.isin(pixels, (0, 255)).all():
        raise ValueError(f"mask {path} is not binary: use white (keep) and black (fill) only")
    return torch.from_numpy(pixels == 255).float()[None]
