"""One image file to the uint8 pixels a training set holds, as the papers' code prepared them.

Three named preprocessings (``data.preprocess``), each ending in a square of ``image_size``:

- ``center-crop`` — the largest centred square, then a bicubic resize (this library's
  default, and what image folders have always been read with);
- ``resize-crop`` — the official DDIM code's LSUN pipeline (torchvision's ``Resize(size)``
  then ``CenterCrop(size)`` on a PIL image): a bilinear resize of the shorter side to
  ``image_size``, the longer to ``int(image_size * long / short)``, then the centred
  square, offset ``round((long' - size) / 2)``;
- ``celeba`` — the official DDIM (and NCSN) CelebA crop: the 128 x 128 box with top-left
  corner (row 57, column 25), i.e. centred on ``(cy, cx) = (121, 89)`` of the aligned
  178 x 218 faces, then a bilinear resize.

The random horizontal flip is not preprocessing: it is drawn per training step
(:func:`ddim.formats.datasets.flip_mask`), so it stays a function of the step.

Any mode Pillow reads is converted to L or RGB: alpha is dropped, palettes expanded, and
16- or 32-bit grayscale scaled to 8 bits by its nominal range, so mixed folders never stop
a run half-way.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ddim.names import PREPROCESSINGS

#: The official CelebA crop box: top, left, height, width (rows 57..184, columns 25..152).
CELEBA_BOX = (57, 25, 128, 128)
# Full scale of the integer modes Pillow reads 16-bit PNGs and TIFFs as.
_WIDE_GRAY = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I": 65535}


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """``img`` as 8-bit L (``channels=1``) or RGB (``channels=3``)."""
    mode = "L" if channels == 1 else "RGB"
    if img.mode in _WIDE_GRAY or img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        full = _WIDE_GRAY.get(img.mode, 1.0)
        gray = np.clip(np.rint(array / full * 255.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(gray, mode="L")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")
    return img if img.mode == mode else img.convert(mode)


def preprocess(img: Image.Image, image_size: int, channels: int, how: str) -> np.ndarray:
    """The pixels of ``img`` as uint8 ``(C, H, W)`` with ``H = W = image_size``, prepared
    as ``how`` (one of :data:`PREPROCESSINGS`) says."""
    if how not in PREPROCESSINGS:
        raise ValueError(f"preprocess must be one of {', '.join(PREPROCESSINGS)}: {how!r}")
    img = to_mode(img, channels)
    width, height = img.size
    if how == "center-crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if side != image_size:
            img = img.resize((image_size, image_size), Image.BICUBIC)
    elif how == "resize-crop":
        short, long = min(width, height), max(width, height)
        scaled = int(image_size * long / short)
        size = (image_size, scaled) if width <= height else (scaled, image_size)
        if size != img.size:
            img = img.resize(size, Image.BILINEAR)
        left = int(round((img.size[0] - image_size) / 2.0))
        top = int(round((img.size[1] - image_size) / 2.0))
        img = img.crop((left, top, left + image_size, top + image_size))
    else:
        top, left, h, w = CELEBA_BOX
        if width < left + w or height < top + h:
            raise ValueError(
                f"the CelebA crop box needs at least {left + w}x{top + h} pixels, got "
                f"{width}x{height}"
            )
        img = img.crop((left, top, left + w, top + h))
        if w != image_size:
            img = img.resize((image_size, image_size), Image.BILINEAR)
    array = np.array(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
