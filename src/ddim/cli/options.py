"""The options several ``ddim`` subcommands share, and the model they choose.

Nothing here imports torch or the library until a command runs: ``ddim --help`` and usage
errors stay fast. The lists that ``click.Choice`` offers come from :mod:`ddim.names`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ddim.cli import run_options

if TYPE_CHECKING:
    import torch

    from ddim.models.unet import UNet
    from ddim.sampling import SamplerOptions
    from ddim.schedule import NoiseSchedule
    from ddim.speed import Fastest, Setting

DEFAULT_MODEL = "mnist"
MAX_SEED = 2**63 - 1  # seeds are int64

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def option(*names: str, **kwargs: Any) -> Decorator:
    """``click.option`` that shows its default in the help unless told otherwise."""
    kwargs.setdefault("show_default", True)
    return click.option(*names, **kwargs)


def count_option(*names: str, minimum: int = 1, **kwargs: Any) -> Decorator:
    """:func:`option` taking a whole number ``>= minimum``."""
    return option(*names, type=click.IntRange(min=minimum), **kwargs)


def choice_option(name: str, choices: Sequence[str], **kwargs: Any) -> Decorator:
    """:func:`option` taking one of ``choices``."""
    return option(name, type=click.Choice(choices), **kwargs)


def out_option(default: str, metavar: str, help: str) -> Decorator:
    """``--out``: what a command writes, ``default`` shown in the help."""
    return option("--out", default=default, metavar=metavar, help=help)


# ---------------------------------------------------------------- devices


class DeviceType(click.ParamType):
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked to be present on this machine."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse ``cuda:1`` into a :class:`torch.device`, or fail with click's one-line
        usage error if it is unknown or unusable here (:func:`ddim.devices.device_problem`)."""
        import torch

        from ddim.devices import device_problem

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


# ---------------------------------------------------------------- options

ckpt_option = option(
    "--ckpt",
    default=DEFAULT_MODEL,
    metavar="PATH",
    help="a ddim .safetensors checkpoint, a diffusers folder, or a bundled model name",
)
device_option = option(
    "--device", type=DeviceType(), default="cpu", help="cpu, cuda, cuda:N or mps"
)
steps_option = run_options.steps_option
sample_steps_option = run_options.run_option(
    "steps", default=None, shown="a distilled student's own plan, else 50"
)
spacing_option = run_options.spacing_option
solver_option = run_options.solver_option
final_step_option = run_options.final_step_option
precision_option = run_options.precision_option
channels_last_option = option(
    "--channels-last/--no-channels-last",
    default=None,
    show_default="off; ddim sample picks by measurement",
    help="run the model in channels-last memory layout",
)
compile_option = option(
    "--compile/--no-compile",
    default=None,
    show_default="off; ddim sample picks by measurement",
    help="torch.compile the model (its cost, paid once per process and cached, is printed)",
)
batch_size_option = count_option(
    "--batch-size", default=64, help="images per model call (results do not depend on it)"
)
seed_option = option(
    "--seed",
    type=click.IntRange(0, MAX_SEED),
    default=0,
    help="image i is drawn with seed + i, whatever the batch size",
)
force_option = click.option("--force", is_flag=True, help="overwrite existing output files")


def options_as(cls: type, options: Sequence[Decorator], name: str = "run") -> Decorator:
    """A decorator that adds ``options`` to a command (in this order in its help) and hands
    their values to it as one keyword argument ``name``, an instance of the dataclass
    ``cls`` whose fields are named like the options' parameters."""
    names = [field.name for field in dataclasses.fields(cls)]

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def command(**kwargs: Any) -> Any:
            value = cls(**{key: kwargs.pop(key) for key in names})
            return f(**{name: value}, **kwargs)

        for each in reversed(options):
            command = each(command)
        return command

    return decorate


@dataclass(frozen=True)
class ModelRun:
    """The values of :func:`model_options`: which model, how its steps are laid out, and
    how it runs and is batched. A command's ``--steps`` (one or a list) stays its own."""

    ckpt: str
    spacing: str
    batch_size: int
    device: torch.device
    precision: str
    channels_last: bool | None
    compile: bool | None

    def load(self, steps: Iterable[int] = ()) -> tuple[UNet, NoiseSchedule]:
        """The model on ``device`` and its schedule, each of ``steps`` checked against it."""
        return load_model(
            self.ckpt, self.device, steps, channels_last=self.channels_last,
            compile=self.compile, rows=self.batch_size,
        )  # fmt: skip

    def sampler(self, steps: int, **more: Any) -> SamplerOptions:
        """The :class:`~ddim.sampling.SamplerOptions` of ``steps`` steps with this
        ``--spacing`` and ``--precision``; ``more`` sets its other fields."""
        from ddim.sampling import SamplerOptions

        return SamplerOptions(steps=steps, spacing=self.spacing, precision=self.precision, **more)


#: ``--ckpt --spacing --batch-size --device --precision --channels-last --compile``, handed
#: to a command as ``run: ModelRun``.
model_options = options_as(
    ModelRun,
    [
        ckpt_option, spacing_option, batch_size_option, device_option, precision_option,
        channels_last_option, compile_option,
    ],
)  # fmt: skip


# ---------------------------------------------------------------- models


def load_model(
    ckpt: str,
    device: torch.device,
    steps: Iterable[int] = (),
    *,
    channels_last: bool | None = False,
    compile: bool | None = False,
    rows: int | None = None,
) -> tuple[UNet, NoiseSchedule]:
    """An eval-mode U-Net on ``device`` and its schedule, from a checkpoint file, a
    diffusers folder or a bundled model name; each of ``steps`` is checked against it.
    ``channels_last`` and ``compile`` prepare it (:func:`ddim.speed.for_inference`);
    compiled, it always runs ``rows`` rows a pass (the batch size), so a short last batch
    or guidance's ``2B`` rows compile nothing new."""
    from ddim.formats.checkpoint import BUNDLED, load_pretrained
    from ddim.formats.diffusers_folder import is_diffusers_folder, load_diffusers

    # A folder that happens to share a bundled model's name (a data folder "mnist") does not
    # hide the bundled model, unless it is a diffusers folder.
    if Path(ckpt).is_dir() and (ckpt not in BUNDLED or is_diffusers_folder(ckpt)):
        model, schedule = load_diffusers(ckpt)
        model = model.to(device)
    else:
        model, schedule = load_pretrained(ckpt, device)
    for s in steps:
        check_steps(schedule, s)
    if channels_last or compile:
        from ddim.speed import prepare

        model = prepare(model, flag_setting(channels_last, compile, rows))
    return model, schedule


def flag_setting(channels_last: bool | None, compile: bool | None, rows: int | None) -> Setting:
    """The :class:`~ddim.speed.Setting` of ``--channels-last`` and ``--compile``: a
    compiled model runs ``rows`` rows a pass."""
    from ddim.speed import Setting

    return Setting(
        channels_last=bool(channels_last), compile=bool(compile), rows=rows if compile else None
    )


def auto_speed(
    model: UNet,
    schedule: NoiseSchedule,
    sampler: SamplerOptions,
    n: int,
    batch_size: int,
    device: torch.device,
    flags: tuple[bool | None, bool | None],
) -> Fastest:
    """With neither ``--channels-last`` nor ``--compile`` given (``flags``), ``model``
    prepared the fastest measured way for sampling ``n`` images (:func:`report_speed` says
    which); else ``model`` as the flags prepared it. Either way the job's figures are
    learned for the next choice (``Fastest.learn``)."""
    from ddim import speed

    if flags != (None, None):
        given = flag_setting(*flags, min(n, batch_size))
        return speed.as_given(
            model, given, schedule, n, batch_size=batch_size, device=device, options=sampler
        )
    return speed.fastest(
        model, schedule, n, image_shape(model), batch_size=batch_size, device=device,
        options=sampler,
    )  # fmt: skip


def report_speed(auto: Fastest) -> None:
    """Say which setting :func:`auto_speed` picked, and why (nothing when flags chose)."""
    if auto.picked:
        click.echo(f"speed: {auto.setting.describe()} ({auto.why})")


def report_compilation(model: object) -> None:
    """Say what torch.compile cost, once the compiled ``model`` has run."""
    seconds = getattr(model, "seconds", None)
    if seconds is not None:
        click.echo(f"torch.compile took {seconds:.1f} s (once per process and batch shape)")


def image_shape(model: UNet) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images ``model`` takes."""
    config = model.config
    return (config.in_channels, config.image_size, config.image_size)


def with_own_plan(sampler: SamplerOptions, steps: int | None, model: object) -> SamplerOptions:
    """``sampler`` with a distilled student's own plan when ``--steps`` was not given (else
    as it is: 50 steps by default); another plan for a student is allowed and says so."""
    from ddim.sampling import own_plan

    plan = own_plan(model)
    if plan is None:
        return sampler
    if steps is None:
        click.echo(f"a distilled student: sampling with its own {len(plan)}-step plan {list(plan)}")
        return dataclasses.replace(sampler, steps=plan)
    click.echo(f"note: this student was distilled for {len(plan)} steps; sampling it with "
               f"{steps} instead")  # fmt: skip
    return sampler


def check_steps(schedule: NoiseSchedule, steps: int) -> None:
    """Reject ``--steps`` above the model's number of training timesteps."""
    if steps > schedule.num_timesteps:
        raise click.BadParameter(
            f"{steps} is more than the model's {schedule.num_timesteps} timesteps",
            param_hint="'--steps'",
        )


def report_calls(schedule: NoiseSchedule, sampler: SamplerOptions, n: int, batch_size: int) -> None:
    """Print what sampling cost in model calls."""
    from ddim.sampling import model_calls

    o = sampler
    calls = model_calls(schedule, o.steps, o.spacing, o.solver, o.final_step)
    batches = -(-n // batch_size)
    notes = []
    if o.guidance not in (None, 0.0, 1.0):
        notes.append(f"classifier-free guidance: each call on 2 x {min(n, batch_size)} rows")
    if o.classifier_scale is not None:
        notes.append(f"and {calls} classifier gradient passes")
    extra = f" ({'; '.join(notes)})" if notes else ""
    click.echo(
        f"{o.solver}: {calls} model calls a batch{extra}, {batches} batch(es) of <= {batch_size}"
    )


def progress_ticks(
    schedule: NoiseSchedule, sampler: SamplerOptions, n: int, batch_size: int
) -> int:
    """Callbacks (progress-bar ticks) to sample or encode ``n`` images in batches of
    ``batch_size``: one per step of the plan and batch."""
    return sampler.plan(schedule).steps * -(-n // batch_size)
