"""What every ``ddim`` subcommand shares: options, devices, model loading, outputs, errors.

Every failure a user can cause ends the same way: one line ``error: ...`` on stderr and
exit status 2 (130 when interrupted). :class:`DdimGroup` turns click's usage errors and
the library's ``ValueError``/``OSError``/``ImportError``/``RuntimeError`` into that line;
set ``DDIM_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
import torch
from tqdm.auto import tqdm

from ddim import workflows
from ddim.formats import images
from ddim.formats.checkpoint import load_pretrained
from ddim.models.unet import UNet
from ddim.sampling import Callback
from ddim.schedule import SPACINGS, NoiseSchedule

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
USER_ERRORS = (ValueError, OSError, ImportError, RuntimeError)
DEFAULT_MODEL = "mnist"
MAX_SEED = 2**63 - 1  # seeds are int64

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def one_line(message: str) -> str:
    """``message`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(message.split())


def describe(error: BaseException) -> str:
    """A one-line description of a library error for the user."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    return str(error).strip() or type(error).__name__


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` to stderr and exit."""
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


class DdimGroup(click.Group):
    """A click group whose failures are one ``error:`` line and exit status 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command like click does, reporting every failure as one line."""
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.format_message())
            sys.exit(0)
        except (click.exceptions.Abort, KeyboardInterrupt):
            fail("interrupted", EXIT_INTERRUPTED)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            fail(e.format_message() + hint)
        except click.ClickException as e:
            fail(e.format_message())
        except USER_ERRORS as e:
            if os.environ.get("DDIM_DEBUG"):
                raise
            fail(describe(e))
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


# ---------------------------------------------------------------- devices


class DeviceType(click.ParamType):
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked to be present on this machine."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, torch.device):
            return value
        try:
            device = torch.device(value)
        except (RuntimeError, TypeError):
            self.fail(f"unknown device {value!r}; use cpu, cuda, cuda:N or mps", param, ctx)
        problem = device_problem(device)
        if problem:
            self.fail(problem, param, ctx)
        return device


def device_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot be used here, or ``None`` if it can."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA was requested but is not available (no GPU, or a CPU-only torch build)"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"{device} was requested but this machine has {count} CUDA device(s)"
        return None
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            return "MPS was requested but is not available on this machine"
        return None
    return f"device type {device.type!r} is not supported; use cpu, cuda, cuda:N or mps"


# ---------------------------------------------------------------- options


def ckpt_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--ckpt",
        default=DEFAULT_MODEL,
        show_default=True,
        metavar="PATH",
        help="a ddim .safetensors checkpoint, a diffusers folder, or a bundled model name",
    )(f)


def device_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--device",
        type=DeviceType(),
        default="cpu",
        show_default=True,
        help="cpu, cuda, cuda:N or mps",
    )(f)


def steps_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--steps",
        type=click.IntRange(min=1),
        default=50,
        show_default=True,
        help="number of DDIM steps S (at most the model's T)",
    )(f)


def spacing_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--spacing",
        type=click.Choice(SPACINGS),
        default="uniform",
        show_default=True,
        help="how the S timesteps are laid out in 0..T-1",
    )(f)


def batch_size_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=64,
        show_default=True,
        help="images per model call (results do not depend on it)",
    )(f)


def seed_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--seed",
        type=click.IntRange(0, MAX_SEED),
        default=0,
        show_default=True,
        help="image i is drawn with seed + i, whatever the batch size",
    )(f)


def force_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--force", is_flag=True, help="overwrite existing output files")(f)


def options_as(cls: type, options: Sequence[Decorator]) -> Decorator:
    """A decorator that adds ``options`` to a command (in this order in its help) and hands
    their values to it as one keyword argument ``run``, an instance of the dataclass ``cls``
    whose fields are named like the options' parameters."""
    names = [field.name for field in dataclasses.fields(cls)]

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def command(**kwargs: Any) -> Any:
            run = cls(**{name: kwargs.pop(name) for name in names})
            return f(run=run, **kwargs)

        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@dataclass(frozen=True)
class ModelRun:
    """The values of :func:`model_options`: which model, and how to step and batch it."""

    ckpt: str
    steps: int
    spacing: str
    batch_size: int
    device: torch.device

    def load(self) -> tuple[UNet, NoiseSchedule]:
        """The model on ``device`` and its schedule, ``--steps`` checked against it."""
        return load_model(self.ckpt, self.device, [self.steps])

    def model_calls(self, schedule: NoiseSchedule, n: int) -> int:
        """Model calls to sample or encode ``n`` images."""
        return bar_total(schedule, self.steps, self.spacing, n, self.batch_size)

    def batching(self, callback: Callback) -> dict[str, Any]:
        """The ``options`` (steps, spacing), ``batch_size`` and ``callback`` of a workflow."""
        return {
            "options": workflows.SamplerOptions(self.steps, self.spacing),
            "batch_size": self.batch_size,
            "callback": callback,
        }


#: ``--ckpt --steps --spacing --batch-size --device``, handed to a command as ``run: ModelRun``.
model_options = options_as(
    ModelRun, [ckpt_option, steps_option, spacing_option, batch_size_option, device_option]
)


# ---------------------------------------------------------------- models


def load_model(
    ckpt: str, device: torch.device, steps: Iterable[int] = ()
) -> tuple[UNet, NoiseSchedule]:
    """An eval-mode U-Net on ``device`` and its schedule, from a checkpoint file, a
    diffusers folder or a bundled model name; each of ``steps`` is checked against it."""
    if Path(ckpt).is_dir():
        from ddim.formats.diffusers import load_diffusers

        model, schedule = load_diffusers(ckpt)
        model = model.to(device)
    else:
        model, schedule = load_pretrained(ckpt, device)
    for s in steps:
        check_steps(schedule, s)
    return model, schedule


def image_shape(model: UNet) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images ``model`` takes."""
    config = model.config
    return (config.in_channels, config.image_size, config.image_size)


def check_steps(schedule: NoiseSchedule, steps: int) -> None:
    """Reject ``--steps`` above the model's number of training timesteps."""
    if steps > schedule.num_timesteps:
        raise click.BadParameter(
            f"{steps} is more than the model's {schedule.num_timesteps} timesteps",
            param_hint="'--steps'",
        )


# ---------------------------------------------------------------- outputs


def is_folder(out: str) -> bool:
    """Whether ``--out`` names a folder: it ends with a separator or is an existing one."""
    return out.endswith(("/", os.sep)) or Path(out).is_dir()


def check_writable(path: Path, force: bool) -> None:
    """Fail early when ``path`` exists (without ``--force``) or cannot be created."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; pass --force to overwrite it")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK):
        raise PermissionError(f"cannot write {path}: {ancestor} is not writable")


def check_output(path: str, suffixes: Sequence[str], what: str, force: bool) -> None:
    """Fail early when the output file ``path`` (given as option ``what``) does not end with
    one of ``suffixes``, or :func:`check_writable` rejects it."""
    if Path(path).suffix.lower() not in suffixes:
        raise click.BadParameter(
            f"{path} must end with {' or '.join(suffixes)}", param_hint=f"'{what}'"
        )
    check_writable(Path(path), force)


def check_image_output(out: str, n: int, force: bool) -> None:
    """Check an images ``--out`` (a .png grid, a .npz or a folder) before any work is done."""
    if is_folder(out):
        for name in images.png_names(n):
            check_writable(Path(out) / name, force)
        return
    check_output(out, (".png", ".npz"), "--out", force)


def write_images(out: str, x: torch.Tensor, nrow: int | None = None) -> str:
    """Write a batch to ``--out`` (checked by :func:`check_image_output`); returns a description."""
    n = x.shape[0]
    if is_folder(out):
        images.save_png_folder(out, x)
        return f"{n} PNG{'s' * (n > 1)} in {out}"
    if Path(out).suffix.lower() == ".npz":
        images.save_npz(out, x)
        return f"{n} image{'s' * (n > 1)} to {out}"
    images.save_png(out, x, nrow)
    return f"a grid of {n} images to {out}" if n > 1 else f"1 image to {out}"


def bar_total(schedule: NoiseSchedule, steps: int, spacing: str, n: int, batch_size: int) -> int:
    """Model calls to sample or encode ``n`` images in batches of ``batch_size``."""
    return workflows.model_calls(schedule, steps, spacing) * -(-n // batch_size)


@contextlib.contextmanager
def progress(total: int, desc: str) -> Iterator[Callback]:
    """A tqdm bar on stderr (shown only when stderr is a terminal) of ``total`` model calls;
    yields the sampler callback that advances it."""
    with tqdm(total=total, desc=desc, unit="step", disable=None, file=sys.stderr) as bar:
        yield lambda *_: bar.update()
