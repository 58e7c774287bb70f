"""Pictures in and out: batches in ``[-1, 1]`` <-> uint8 pixels, grids, PNG folders, ``.npz``
arrays and animated GIFs. Every file is written atomically (see :mod:`ddim.formats.atomic`).

Pixels map as ``uint8 = round((x + 1) * 127.5)`` after clamping to ``[-1, 1]``, and back
as ``x = uint8 / 127.5 - 1`` (the same scale as :mod:`ddim.formats.datasets`).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddim.formats.archives import load_npz
from ddim.formats.atomic import atomic_write_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
ARRAY_EXTENSIONS = (".npz", ".npy")
_MODE_CHANNELS = {"1": 1, "L": 1, "P": 3, "RGB": 3}


def find_files(root: Path, extensions: Sequence[str]) -> list[Path]:
    """Every file under ``root`` (recursive) whose extension, in any case, is one of
    ``extensions``, sorted by path relative to ``root``."""
    return sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(B, C, H, W)`` in ``[-1, 1]`` -> uint8 ``(B, H, W, C)``, rounding to nearest."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 1 or 3, H, W), got {tuple(x.shape)}")
    pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def make_grid(x: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile a batch into one uint8 ``(H', W', C)`` image, ``nrow`` images per row
    (default: a near-square grid), separated by ``padding`` black pixels."""
    images = to_uint8(x)
    n, h, w, c = images.shape
    cols = nrow or math.ceil(math.sqrt(n))
    if cols < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    rows = math.ceil(n / cols)
    grid = np.zeros(
        (rows * (h + padding) + padding, cols * (w + padding) + padding, c), dtype=np.uint8
    )
    for i, image in enumerate(images):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        grid[top : top + h, left : left + w] = image
    return grid


def _picture(x: torch.Tensor, nrow: int | None) -> Image.Image:
    """One PIL image of a batch: the image itself for a batch of one, else a grid."""
    array = to_uint8(x)[0] if x.shape[0] == 1 else make_grid(x, nrow)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def png_bytes(x: torch.Tensor, nrow: int | None = None) -> bytes:
    """A batch as the bytes of one PNG grid (a single image when the batch holds one)."""
    buffer = io.BytesIO()
    _picture(x, nrow).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: str | os.PathLike[str], x: torch.Tensor, nrow: int | None = None) -> None:
    """Write a batch as one PNG grid (a single image when the batch holds one), atomically."""
    atomic_write_bytes(path, png_bytes(x, nrow))


def png_names(n: int, start: int = 0) -> list[str]:
    """The file names :func:`save_png_folder` gives images ``start .. start + n - 1``."""
    return [f"{i:06d}.png" for i in range(start, start + n)]


def save_png_folder(folder: str | os.PathLike[str], x: torch.Tensor, start: int = 0) -> list[Path]:
    """Write every image of a batch to ``folder/{index:06d}.png``, numbered from ``start``."""
    paths = [Path(folder) / name for name in png_names(x.shape[0], start)]
    for i, path in enumerate(paths):
        atomic_write_bytes(path, png_bytes(x[i : i + 1]))
    return paths


def save_npz(path: str | os.PathLike[str], x: torch.Tensor, key: str = "samples") -> None:
    """Write a batch as one uint8 ``(N, H, W, C)`` array named ``key`` in an ``.npz`` file
    (the layout :func:`ddim.formats.archives.load_npz` and common FID tools read)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{key: to_uint8(x)})
    atomic_write_bytes(path, buffer.getvalue())


def save_gif(
    path: str | os.PathLike[str],
    frames: Sequence[torch.Tensor],
    nrow: int | None = None,
    duration_ms: int = 80,
    hold_last_ms: int = 1000,
) -> None:
    """Write an animated GIF that loops forever, one frame per batch in ``frames`` (each
    tiled like :func:`save_png`); the last frame stays up for ``hold_last_ms``."""
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    images = [_picture(frame, nrow) for frame in frames]
    durations = [duration_ms] * (len(images) - 1) + [hold_last_ms]
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=durations,
        loop=0,
    )
    atomic_write_bytes(path, buffer.getvalue())


def stack_rows(top: torch.Tensor, bottom: torch.Tensor, ncols: int) -> torch.Tensor:
    """Interleave two equal batches so that a grid of ``ncols`` per row shows a row of
    ``top`` above the matching row of ``bottom`` (short last rows are padded with black)."""
    if top.shape != bottom.shape:
        raise ValueError(
            f"stack_rows needs batches of one shape, got {tuple(top.shape)} and "
            f"{tuple(bottom.shape)}"
        )
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    blank = torch.full(
        (-top.shape[0] % ncols, *top.shape[1:]), -1.0, dtype=top.dtype, device=top.device
    )
    rows_top = torch.cat([top, blank]).split(ncols)
    rows_bottom = torch.cat([bottom, blank]).split(ncols)
    return torch.cat([r for pair in zip(rows_top, rows_bottom, strict=True) for r in pair])


def image_files(sources: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into a list of files: a folder contributes every
    .png/.jpg/.jpeg/.webp/.npz/.npy under it (recursive, sorted), a file itself."""
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = find_files(path, IMAGE_EXTENSIONS + ARRAY_EXTENSIONS)
            if not found:
                raise ValueError(f"no images found in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"image {path} does not exist")
    return files


def read_images(
    sources: Sequence[str | os.PathLike[str]], channels: int, image_size: int
) -> tuple[torch.Tensor, list[str]]:
    """Load images exactly as they are (no resizing) into a ``(N, C, H, W)`` batch in ``[-1, 1]``.

    ``sources`` are image files, ``.npz``/``.npy`` arrays (see
    :func:`ddim.formats.archives.load_npz`) or
    folders of them. Every image must have ``channels`` channels (1: grayscale, 3: RGB) and
    be ``image_size`` pixels square; anything else is an error naming the file. Returns the
    batch and one label per image (the file, with ``[i]`` for images from an array). An
    image file's size is checked from its header, before it is decoded.
    """
    batches, labels = [], []
    expected = (channels, image_size, image_size)
    for file in image_files(sources):
        if file.suffix.lower() in ARRAY_EXTENSIONS:
            x = load_npz(file)
            names = [f"{file}[{i}]" for i in range(x.shape[0])]
        else:
            x = _read_one(file, expected)[None]
            names = [str(file)]
        _check_shape(file, tuple(x.shape[1:]), expected)
        batches.append(x)
        labels.extend(names)
    return torch.cat(batches), labels


def _check_shape(file: Path, chw: tuple[int, ...], expected: tuple[int, int, int]) -> None:
    if chw != expected:
        raise ValueError(
            f"{file} holds {_describe(chw)} images; the model takes {_describe(expected)}"
        )


def _describe(chw: Sequence[int]) -> str:
    c, h, w = chw
    kind = {1: "grayscale", 3: "RGB"}.get(c, f"{c}-channel")
    return f"{w}x{h} {kind}"


@contextlib.contextmanager
def opened_image(
    file: Path, check: Callable[[Image.Image], None] | None = None
) -> Iterator[Image.Image]:
    """``file`` opened and decoded by Pillow; a ValueError naming it if it cannot be read.

    ``check`` sees the image after its header is read and before its pixels are decoded
    (Pillow opens lazily), so it can refuse a huge image cheaply. Pillow's own limit
    (:data:`PIL.Image.MAX_IMAGE_PIXELS`, twice it is an error) is not also a warning.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(file)
        with opened as img:
            if check is not None:
                check(img)
            img.load()
            yield img
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {file}: {e}") from None


def _read_one(file: Path, expected: tuple[int, int, int]) -> torch.Tensor:
    """One image file of ``expected`` ``(C, H, W)`` as a tensor in ``[-1, 1]``: 8-bit
    grayscale or RGB only; its mode and size are checked before it is decoded."""

    def check(img: Image.Image) -> None:
        if img.mode not in _MODE_CHANNELS:
            raise ValueError(
                f"image {file} has pixel mode {img.mode}; only 8-bit grayscale (L) and RGB "
                f"images without alpha are read"
            )
        width, height = img.size
        _check_shape(file, (_MODE_CHANNELS[img.mode], height, width), expected)

    with opened_image(file, check) as img:
        img = img.convert("L" if _MODE_CHANNELS[img.mode] == 1 else "RGB")
        array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy()).float() / 127.5 - 1.0
