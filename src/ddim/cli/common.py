"""What every ``ddim`` subcommand shares: its group, output files and progress (options and
model loading are in :mod:`ddim.cli.options`; how a command fails, one line ``error: ...``
and exit status 2, in :mod:`ddim.exits`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ddim.exits import OneLineErrors
from ddim.formats.atomic import refuse_overwrite

if TYPE_CHECKING:
    import torch

    from ddim.sampling import Callback


class DdimGroup(OneLineErrors, click.Group):
    """A click group whose failures are one ``error:`` line and exit status 2."""


# ---------------------------------------------------------------- outputs


def is_folder(out: str) -> bool:
    """Whether ``--out`` names a folder: it ends with a separator or is an existing one."""
    return out.endswith(("/", os.sep)) or Path(out).is_dir()


def refuse_torchrun(what: str) -> None:
    """A usage error when this process is one of several torchrun processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise click.UsageError(f"{what} runs in one process; under torchrun give a folder --out")


def check_absent(path: str | Path, force: bool) -> None:
    """Fail early when ``path`` exists and ``--force`` was not given."""
    refuse_overwrite(path, force, hint="pass --force to overwrite it")


def check_writable(path: Path, force: bool) -> None:
    """Fail early when ``path`` exists (without ``--force``) or cannot be created."""
    check_absent(path, force)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK):
        raise PermissionError(f"cannot write {path}: {ancestor} is not writable")


def check_output(path: str | None, suffixes: Sequence[str], what: str, force: bool) -> None:
    """Fail early when the output file ``path`` (given as option ``what``) does not end with
    one of ``suffixes``, or :func:`check_writable` rejects it; ``None`` (an output that was
    not asked for) passes."""
    if path is None:
        return
    if Path(path).suffix.lower() not in suffixes:
        raise click.BadParameter(
            f"{path} must end with {' or '.join(suffixes)}", param_hint=f"'{what}'"
        )
    check_writable(Path(path), force)


def check_image_output(out: str, n: int, force: bool) -> None:
    """Check an images ``--out`` (a .png grid, a .npz or a folder) before any work is done."""
    from ddim.formats import images

    if is_folder(out):
        for name in images.png_names(n):
            check_writable(Path(out) / name, force)
        return
    check_output(out, (".png", ".npz"), "--out", force)


def write_images(out: str, x: torch.Tensor, nrow: int | None = None) -> str:
    """Write a batch to ``--out`` (checked by :func:`check_image_output`); returns a description."""
    from ddim.formats import images

    n = x.shape[0]
    if is_folder(out):
        images.save_png_folder(out, x)
        return f"{n} PNG{'s' * (n > 1)} in {out}"
    if Path(out).suffix.lower() == ".npz":
        images.save_npz(out, x)
        return f"{n} image{'s' * (n > 1)} to {out}"
    images.save_png(out, x, nrow)
    return f"a grid of {n} images to {out}" if n > 1 else f"1 image to {out}"


@contextlib.contextmanager
def progress(total: int, desc: str, shown: bool = True) -> Iterator[Callback]:
    """A tqdm bar on stderr (unless ``shown`` is false, shown only when stderr is a terminal)
    of ``total`` sampler steps; yields the sampler callback that advances it."""
    from tqdm.auto import tqdm

    disable = None if shown else True
    with tqdm(total=total, desc=desc, unit="step", disable=disable, file=sys.stderr) as bar:
        yield lambda *_: bar.update()
