"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one.

:func:`atomic_write` writes to a temporary file in the target's directory, flushes and
fsyncs it, renames it over the target with :func:`os.replace` (atomic on POSIX and
Windows), then fsyncs the directory so the rename itself survives a power loss.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` only if the ``with`` block succeeds.

    ``mode`` is ``"wb"`` (the default) or ``"w"`` (UTF-8 text). On an exception the
    temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = target.parent / f"{TEMP_PREFIX}{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
    # os.open with mode 0o666 honours the umask (mkstemp would make the file private).
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(target.parent)


def refuse_overwrite(
    path: str | os.PathLike[str], overwrite: bool, hint: str = "pass overwrite=True to replace it"
) -> None:
    """A FileExistsError when ``path`` exists and ``overwrite`` is false."""
    if not overwrite and Path(path).exists():
        raise FileExistsError(f"{path} already exists; {hint}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry to disk (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files that a killed :func:`atomic_write` left in ``directory``."""
    removed = []
    for p in Path(directory).glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed
