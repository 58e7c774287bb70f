"""The options of ``ddim eval``: number lists, slices, the rows of Table 1, the model run
(:class:`Run`), and reading reference images.

Nothing here imports torch or the library until a command runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ddim.cli import options
from ddim.cli.options import option
from ddim.names import FEATURES, JUDGES

if TYPE_CHECKING:
    import torch

    from ddim.eval.panel import Panel
    from ddim.models.unet import UNet
    from ddim.schedule import NoiseSchedule


class NumberList(click.ParamType):
    """A comma-separated list of numbers ``>= minimum``, e.g. ``10,20,50``."""

    def __init__(self, kind: type, minimum: float) -> None:
        self.kind, self.minimum = kind, minimum
        self.name = f"{kind.__name__} list"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse ``10,20,50`` into a list of ``kind``, or fail with click's one-line usage
        error."""
        if isinstance(value, list):
            return value
        try:
            items = [self.kind(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated {self.name}", param, ctx)
        if not items or min(items) < self.minimum:
            self.fail(f"{value!r} needs one or more values >= {self.minimum}", param, ctx)
        return items


class Slice(click.ParamType):
    """``START:STOP`` (either may be empty), as in Python."""

    name = "start:stop"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse ``9000:10000`` into a :class:`slice`, or fail with click's one-line usage
        error."""
        if isinstance(value, slice):
            return value
        try:
            start, stop = (int(v) if v else None for v in str(value).split(":"))
        except ValueError:
            self.fail(f"{value!r} is not START:STOP, e.g. 9000:10000", param, ctx)
        return slice(start, stop)


def steps_list(default: str) -> options.Decorator:
    """``--steps``: the numbers of steps S to run, comma-separated (each ``>= 1``), as
    ``steps_list``; ``default`` is shown in the help."""
    return option(
        "--steps",
        "steps_list",
        type=NumberList(int, 1),
        default=default,
        help="numbers of steps S, comma-separated",
    )


def grid_rows(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--etas`` and ``--sigma-hat/--no-sigma-hat``: the rows of Table 1."""
    f = option("--sigma-hat/--no-sigma-hat", default=True, help="add the sigma-hat row")(f)
    return option(
        "--etas", type=NumberList(float, 0.0), default="0,0.2,0.5,1", help="the eta of each row"
    )(f)


@dataclass(frozen=True)
class Run(options.ModelRun):
    """The values of :func:`run_options`: the model run of :class:`~ddim.cli.options.ModelRun`,
    how many images, their first seed, and where results go."""

    n: int
    seed: int
    out_dir: str

    def prepare(self, steps: Sequence[int]) -> tuple[UNet, NoiseSchedule, tuple[int, int, int]]:
        """The model (prepared as ``--channels-last``/``--compile`` ask; the compilation's
        cost is reported when the command ends), its schedule (each of ``steps`` checked
        against it) and image shape."""
        model, schedule = self.load(steps)
        if self.compile:
            click.get_current_context().call_on_close(lambda: options.report_compilation(model))
        return model, schedule, options.image_shape(model)


def run_options(n: int) -> options.Decorator:
    """``--ckpt --spacing --batch-size --device --precision --channels-last --compile -n --seed
    --out-dir``, as ``run: Run``."""
    return options.options_as(
        Run,
        [
            options.ckpt_option,
            options.spacing_option,
            options.batch_size_option,
            options.device_option,
            options.precision_option,
            options.channels_last_option,
            options.compile_option,
            option("-n", "n", type=click.IntRange(min=1), default=n, help="number of images"),
            options.seed_option,
            option(
                "--out-dir",
                type=click.Path(file_okay=False),
                default="results",
                help="output folder",
            ),
        ],
    )


#: ``--features``: which features FD is computed on.
features_option = option(
    "--features", type=click.Choice(FEATURES), default="mnist",
    help="mnist: the bundled classifier (FD-MNIST); inception: FID (ddim[fid]); pixels",
)  # fmt: skip


def reference_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--features --ref-data --ref-slice --ref-stats``: the reference statistics of FD."""
    for decorate in reversed([
        features_option,
        option("--ref-data", metavar="PATH", help="reference images: MNIST idx3, .npz or folder"),
        option("--ref-slice", type=Slice(), default=":", help="which reference images, START:STOP"),
        option("--ref-stats", type=click.Path(dir_okay=False), help="statistics (.npz)"),
    ]):  # fmt: skip
        f = decorate(f)
    return f


def load_images(path: str, part: slice, shape: tuple[int, int, int]) -> torch.Tensor:
    """An MNIST idx3 file (``*idx3-ubyte[.gz]``) or any images ``read_images`` takes, sliced."""
    from ddim.formats.archives import load_mnist
    from ddim.formats.images import read_images

    if "idx3-ubyte" in Path(path).name:
        x = load_mnist(path)
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"{path} holds {tuple(x.shape[1:])} images; the model takes {shape}")
    else:
        x = read_images([path], shape[0], shape[1])[0]
    x = x[part]
    if x.shape[0] == 0:
        raise ValueError(f"the slice {part.start}:{part.stop} of {path} holds no images")
    return x


def reference_stats(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    features: str,
    ref_data: str | None,
    ref_slice: slice,
    ref_stats: str | None,
    shape: tuple[int, int, int],
    run: Run,
) -> Any:
    """The reference :class:`~ddim.eval.metrics.FeatureStats`: loaded from ``ref_stats``, or
    computed from ``ref_data`` (cached under ``$DDIM_CACHE/stats``); the caller checks that
    exactly one is given."""
    from ddim.eval import metrics

    if ref_stats is not None:
        return metrics.FeatureStats.load(ref_stats)
    key = f"{Path(ref_data).resolve()}[{ref_slice.start}:{ref_slice.stop}]-{features}"
    return metrics.cached_stats(
        key,
        lambda: metrics.dataset_stats(
            feature_fn, load_images(ref_data, ref_slice, shape), run.batch_size, run.device
        ),
    )


class JudgeList(click.ParamType):
    """Comma-separated judges of :data:`ddim.names.JUDGES`, or ``all`` (empty: none)."""

    name = "judges"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse ``fd-mnist,kid-mnist`` or ``all`` into a tuple of judge names (repeats
        dropped, order kept), or fail with click's one-line usage error."""
        if isinstance(value, tuple):
            return value
        names = [v.strip() for v in str(value).split(",") if v.strip()]
        if names == ["all"]:
            return JUDGES
        unknown = [v for v in names if v not in JUDGES]
        if unknown:
            self.fail(f"{value!r}: judges are all or some of {', '.join(JUDGES)}", param, ctx)
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Judging:
    """The values of :func:`judge_options`."""

    judges: tuple[str, ...]
    train_slice: slice
    floor_draws: int
    keep: str | None

    def panel(
        self, ref_data: str | None, ref_slice: slice, shape: tuple[int, ...], device: Any
    ) -> Panel | None:
        """The :class:`~ddim.eval.panel.Panel` of ``--judges`` (``None`` without it), judging
        against ``ref_data[ref_slice]``, PCA basis and floor from ``ref_data[train_slice]``."""
        from ddim.distributed import world
        from ddim.eval.panel import Panel

        if not self.judges:
            if self.keep is not None:
                raise click.UsageError("--keep keeps the samples the judges see: give --judges")
            return None
        if ref_data is None:
            raise click.UsageError("--judges needs --ref-data: they read the reference images")
        if tuple(shape) != (1, 28, 28):
            raise click.UsageError(f"the judges read 28 x 28 grey digits; the model makes {shape}")
        if world()[1] > 1:
            raise click.UsageError("--judges keeps every sample: run it in one process")
        return Panel.build(
            self.judges, load_images(ref_data, ref_slice, (1, 28, 28)),
            load_images(ref_data, self.train_slice, (1, 28, 28)), self.floor_draws, device,
        )  # fmt: skip


def judge_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--judges --train-slice --floor-draws --keep``, as ``judging: Judging``."""
    return options.options_as(
        Judging,
        [
            option(
                "--judges",
                type=JudgeList(),
                default="",
                show_default="none",
                help="also score each set with these judges (comma-separated, or all), "
                "each with its 95 % interval, next to the floor of real images: "
                + ", ".join(JUDGES),
            ),  # fmt: skip
            option(
                "--train-slice",
                type=Slice(),
                default="0:9000",
                help="of --ref-data: the judges' PCA basis and the floor's draws",
            ),  # fmt: skip
            option(
                "--floor-draws",
                type=click.IntRange(min=0),
                default=5,
                help="random sets of real images judged as the floor (0: none)",
            ),  # fmt: skip
            option(
                "--keep",
                type=click.Path(file_okay=False),
                default=None,
                help="write each set the judges score here as <set>.npz (uint8)",
            ),  # fmt: skip
        ],
        name="judging",
    )(f)
