"""The file formats of the classic image data sets, read without executing code.

MNIST's idx files (raw or gzip), CIFAR-10's python batches (unpickled with only numpy
arrays allowed) and ``.npz``/``.npy`` arrays of images. The ``read_*`` functions keep the
bytes (uint8 ``(N, C, H, W)``, the form a training set holds); the ``load_*`` ones give
float32 in ``[-1, 1]``.
"""

from __future__ import annotations

import codecs
import gzip
import io
import math
import os
import pickle
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

try:
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

MNIST_MAGIC = 2051
LABELS_MAGIC = 2049
CIFAR_SPLITS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}

PathLike = str | os.PathLike


def uint8_to_tensor(array: np.ndarray) -> Tensor:
    """uint8 ``0..255`` -> float32 ``[-1, 1]`` (0 -> -1, 255 -> 1)."""
    array = np.require(array, dtype=np.uint8, requirements=["C", "W"])
    return torch.from_numpy(array).to(torch.float32).div_(127.5).sub_(1.0)


def read_bytes(path: PathLike, what: str) -> bytes:
    """The whole content of the file ``path``; a ValueError naming it as ``what``
    (e.g. ``"MNIST file"``) when it is missing or not a file."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{what} {file} does not exist or is not a file")
    return file.read_bytes()


# ---------------------------------------------------------------- MNIST idx


def read_idx(path: PathLike, what: str, magic: int, ndim: int) -> tuple[list[int], bytes]:
    """The dimensions an idx file (raw or gzip-compressed) declares, and its whole content.

    The header must start with ``magic`` (2051 for MNIST images, 2049 for labels) and hold
    ``ndim`` sizes; the data follow it at byte ``4 * (1 + ndim)``. Errors name the file as
    ``what`` (e.g. ``"MNIST file"``).
    """
    raw = read_bytes(path, what)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{what} {path} is not a valid gzip file: {e}") from e
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise ValueError(f"{what} {path} is truncated: {len(raw)} bytes, header needs {header}")
    found, *dims = (int(v) for v in np.frombuffer(raw, dtype=">u4", count=1 + ndim))
    if found != magic:
        raise ValueError(f"{what} {path} has magic {found}, not {magic}")
    return dims, raw


def load_mnist(path: PathLike) -> Tensor:
    """An idx3-ubyte images file (raw or gzip-compressed): float ``(N, 1, rows, cols)``."""
    return uint8_to_tensor(read_mnist(path))


def read_mnist(path: PathLike) -> np.ndarray:
    """An idx3-ubyte images file (raw or gzip-compressed): uint8 ``(N, 1, rows, cols)``."""
    (n, rows, cols), raw = read_idx(path, "MNIST file", MNIST_MAGIC, 3)
    if n == 0 or rows == 0 or cols == 0:
        raise ValueError(f"MNIST file {path} holds no images ({n} x {rows} x {cols})")
    expected = 16 + n * rows * cols
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(f"MNIST file {path} is {problem}: {len(raw)} bytes, expected {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)


# ---------------------------------------------------------------- CIFAR-10 batches


def load_mnist_labels(path: str | os.PathLike[str]) -> Tensor:
    """An idx1-ubyte labels file (raw or gzip-compressed) as a LongTensor ``(N,)``."""
    (n,), raw = read_idx(path, "MNIST labels file", LABELS_MAGIC, 1)
    if len(raw) != 8 + n:
        raise ValueError(f"MNIST labels file {path} has {len(raw) - 8} labels, header says {n}")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
    if labels.max(initial=0) > 9:
        raise ValueError(f"MNIST labels file {path} holds labels above 9")
    return torch.from_numpy(labels.astype(np.int64))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused.

    Pickles run code on load; this allow-list covers what the CIFAR-10 python batches
    (and numpy array pickles of protocols 2 to 5) reference, none of which has side effects.
    """

    ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def _load_cifar_batch(file: Path) -> np.ndarray:
    raw = read_bytes(file, "CIFAR-10 batch")
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # a corrupt pickle can raise almost anything
        raise ValueError(f"CIFAR-10 batch {file} is not a readable batch pickle: {e}") from e
    data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"CIFAR-10 batch {file} has no uint8 (N, 3072) array under b'data'")
    if data.shape[1] != 3 * 32 * 32 or data.shape[0] == 0:
        raise ValueError(f"CIFAR-10 batch {file} has data of shape {data.shape}, not (N, 3072)")
    return data.reshape(-1, 3, 32, 32)


def load_cifar10(path: PathLike, split: str = "train") -> Tensor:
    """:func:`read_cifar10` as float32 in ``[-1, 1]``."""
    return uint8_to_tensor(read_cifar10(path, split))


def read_cifar10(path: PathLike, split: str = "train") -> np.ndarray:
    """CIFAR-10 python batches: uint8 ``(N, 3, 32, 32)``.

    ``path`` is either one batch file, or the ``cifar-10-batches-py`` directory, from which
    ``split="train"`` reads ``data_batch_1`` .. ``data_batch_5`` and ``split="test"`` reads
    ``test_batch`` (``split`` does not matter for a single file). The pickles are read with
    an unpickler that refuses every global but numpy's array reconstruction, so a tampered
    file cannot run code.
    """
    if split not in CIFAR_SPLITS:
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    root = Path(path)
    if root.is_dir():
        files = [root / name for name in CIFAR_SPLITS[split]]
    else:
        files = [root]
    return np.concatenate([_load_cifar_batch(f) for f in files])


# ---------------------------------------------------------------- npz arrays


def _to_nchw(array: np.ndarray, path: PathLike) -> np.ndarray:
    """(N, H, W) gains a channel axis; a 4-D array is channels-first when axis 1 has 1 or 3
    entries and axis 3 does not, channels-last in the mirror case; anything else is refused."""
    if array.ndim == 3:
        return array[:, None]
    if array.ndim != 4:
        raise ValueError(f"array in {path} has shape {array.shape}; expected 3 or 4 dimensions")
    first, last = array.shape[1] in (1, 3), array.shape[3] in (1, 3)
    if first and not last:
        return array
    if last and not first:
        return array.transpose(0, 3, 1, 2)
    raise ValueError(f"array in {path} has shape {array.shape}; cannot tell the channel axis")


#: What numpy, zipfile and zlib raise for a damaged file (RuntimeError: an encrypted or
#: exotically compressed member; MemoryError: an array too large to hold).
_NPZ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    RuntimeError,
    MemoryError,
    zlib.error,
    zipfile.BadZipFile,
)


class _NpzContentError(ValueError):
    """A readable npz whose arrays do not fit the request; passed through unchanged."""


@contextmanager
def _npz_errors(file: Path) -> Iterator[None]:
    try:
        yield
    except _NpzContentError:
        raise
    except _NPZ_ERRORS as e:
        raise ValueError(f"cannot read npz file {file}: {e}") from None


def _check_claimed_sizes(f: IO[bytes]) -> None:
    """Refuse, from their headers alone, arrays of an ``.npy`` or ``.npz`` file ``f`` that
    claim more bytes than the file holds: numpy would allocate the claim before reading."""
    magic = np.lib.format.MAGIC_PREFIX
    start = f.read(len(magic))
    f.seek(0)
    if start == magic:
        _check_npy_header(f, os.fstat(f.fileno()).st_size, "the array")
    elif start.startswith(b"PK"):
        with zipfile.ZipFile(f) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    if member.read(len(magic)) == magic:
                        member.seek(0)
                        _check_npy_header(member, info.file_size, f"array {info.filename}")
    f.seek(0)


def _check_npy_header(f: IO[bytes], size: int, what: str) -> None:
    """Refuse the ``.npy`` data of ``size`` bytes (header included) in ``f`` if its header
    claims more data than that."""
    if np.lib.format.read_magic(f) == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:  # versions 2 and 3 differ in the header's text encoding only
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    claimed, held = math.prod(shape) * dtype.itemsize, size - f.tell()
    if claimed > held:
        raise ValueError(
            f"{what} claims shape {shape} of {dtype} ({claimed:,} bytes) but holds "
            f"{max(held, 0):,} bytes; refusing to read it"
        )


def load_npz(path: PathLike, key: str | None = None) -> Tensor:
    """:func:`read_npz` as float32 in ``[-1, 1]``."""
    array = read_npz(path, key)
    return array.to(torch.float32).div_(127.5).sub_(1.0) if array.dtype == torch.uint8 else array


def read_npz(path: PathLike, key: str | None = None) -> Tensor:
    """An image array from an ``.npz`` (or ``.npy``) file: ``(N, C, H, W)``, uint8 for
    integer arrays, float32 for float ones.

    Accepted layouts are ``(N, H, W)``, ``(N, H, W, C)`` and ``(N, C, H, W)`` with C = 1
    or 3. Values: unsigned/signed integers must lie in ``0..255`` and map to ``[-1, 1]``
    like uint8 (``v / 127.5 - 1``); floats are taken as already scaled and must lie in
    ``[-1, 1]``. ``key`` picks the array; without it the file must hold exactly one.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"npz file {file} does not exist or is not a file")
    with _npz_errors(file), open(file, "rb") as f:  # our handle: np.load leaks its own
        _check_claimed_sizes(f)
        loaded = np.load(f, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            array = loaded
        else:
            names = list(loaded.files)
            if not names:
                raise _NpzContentError(f"npz file {file} holds no arrays, so no images")
            if key is None and len(names) != 1:
                raise _NpzContentError(f"npz file {file} holds arrays {names}; pass key=")
            if key is not None and key not in names:
                raise _NpzContentError(f"npz file {file} has no array {key!r}; it holds {names}")
            array = loaded[names[0] if key is None else key]
    if isinstance(loaded, np.ndarray) and key is not None:
        raise ValueError(f"{file} is a single .npy array; key={key!r} does not apply")
    if not isinstance(array, np.ndarray):
        raise ValueError(f"npz file {file} holds a member that is not a .npy array")

    array = _to_nchw(array, file)
    if array.size == 0:
        raise ValueError(f"npz file {file} holds no images (an array of shape {array.shape})")
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"integer array in {file} has values outside 0..255")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < -1.0 or array.max() > 1.0:
            raise ValueError(f"float array in {file} must lie in [-1, 1] with no NaN or inf")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    raise ValueError(f"array in {file} has dtype {array.dtype}; expected integers or floats")


def load_npz_labels(path: PathLike, key: str) -> Tensor:
    """The 1-D integer array ``key`` of an ``.npz`` file (class labels) as a LongTensor."""
    file = Path(path)
    with _npz_errors(file), open(file, "rb") as f:
        _check_claimed_sizes(f)
        loaded = np.load(f, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            raise _NpzContentError(f"{file} is a single .npy array; it holds no labels {key!r}")
        if key not in loaded.files:
            raise _NpzContentError(f"npz file {file} has no array {key!r}; it holds {loaded.files}")
        array = loaded[key]
    if not isinstance(array, np.ndarray):
        raise ValueError(f"labels {key!r} in {file} are not a .npy array")
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"labels {key!r} in {file} must be a 1-D integer array, got {array.dtype} {array.shape}"
        )
    return torch.from_numpy(array.astype(np.int64))
