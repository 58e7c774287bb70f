"""``ddim eval``: the paper's Table 1, Table 2, Figures 5 and 6, and the exact oracle grid.

``table1`` also runs sharded, e.g. ``torchrun --nproc_per_node=4 $(which ddim) eval table1``:
each process samples its share of the images and rank 0 writes the results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

from ddim import experiments, gaussian_exact, metrics, reports
from ddim.cli import common
from ddim.cli.sample import MAX_SEED
from ddim.data import load_mnist
from ddim.images import read_images
from ddim.models.classifier import load_classifier
from ddim.schedule import SPACINGS, NoiseSchedule
from ddim.sharding import init_from_env, world

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class NumberList(click.ParamType):
    """A comma-separated list of numbers ``>= minimum``, e.g. ``10,20,50``."""

    def __init__(self, kind: type, minimum: float) -> None:
        self.kind, self.minimum = kind, minimum
        self.name = f"{kind.__name__} list"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
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
        if isinstance(value, slice):
            return value
        try:
            start, stop = (int(v) if v else None for v in str(value).split(":"))
        except ValueError:
            self.fail(f"{value!r} is not START:STOP, e.g. 9000:10000", param, ctx)
        return slice(start, stop)


def _opt(*names: str, **kwargs: Any) -> Decorator:
    return click.option(*names, show_default=True, **kwargs)


def steps_list(default: str) -> Decorator:
    return _opt(
        "--steps",
        "steps_list",
        type=NumberList(int, 1),
        default=default,
        help="numbers of steps S, comma-separated",
    )


def grid_rows(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--etas`` and ``--sigma-hat/--no-sigma-hat``: the rows of Table 1."""
    f = _opt("--sigma-hat/--no-sigma-hat", default=True, help="add the sigma-hat row")(f)
    return _opt(
        "--etas", type=NumberList(float, 0.0), default="0,0.2,0.5,1", help="the eta of each row"
    )(f)


def run_options(n: int) -> Decorator:
    """``--ckpt --spacing --batch-size --device -n --seed --out-dir``."""

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in (
            _opt(
                "--out-dir",
                type=click.Path(file_okay=False),
                default="results",
                help="output folder",
            ),
            _opt(
                "--seed", type=click.IntRange(0, MAX_SEED), default=0, help="image i uses seed + i"
            ),
            _opt("-n", "n", type=click.IntRange(min=1), default=n, help="number of images"),
            common.device_option,
            common.batch_size_option,
            common.spacing_option,
            common.ckpt_option,
        ):
            f = option(f)
        return f

    return apply


def _check_steps(schedule: NoiseSchedule, steps: list[int]) -> None:
    for s in steps:
        common.check_steps(schedule, s)


def _load_images(path: str, part: slice, shape: tuple[int, int, int]) -> torch.Tensor:
    """An MNIST idx3 file (``*idx3-ubyte[.gz]``) or anything ``ddim.images`` reads, sliced."""
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


@click.group("eval", cls=common.DdimGroup)
def eval_group() -> None:
    """Reproduce the paper's experiments: Table 1 and 2, Figures 5 and 6, an exact oracle."""


@eval_group.command("oracle")
@steps_list("10,20,50,100,1000")
@grid_rows
@_opt(
    "--spacing", "spacings", type=click.Choice(SPACINGS), multiple=True,
    default=["uniform", "quad"], help="timestep spacing (repeat for several)",
)  # fmt: skip
@_opt("--dim", type=click.IntRange(min=1), default=3072, help="data dimension D")
@_opt("--alpha", type=click.FloatRange(min=0.0), default=1.0, help="lambda_k = k^-alpha")
@_opt("--out-dir", type=click.Path(file_okay=False), default=None, help="also write files here")
def oracle_command(
    steps_list: list[int],
    etas: list[float],
    sigma_hat: bool,
    spacings: tuple[str, ...],
    dim: int,
    alpha: float,
    out_dir: str | None,
) -> None:
    """Exact Table 1 on Gaussian data N(0, diag(k^-alpha)) with the exact eps (no sampling).

    Each cell is the exact squared 2-Wasserstein (Fréchet) distance between the sampler's
    output law and the data law; the linear schedule with T = 1000.
    """
    schedule = NoiseSchedule.linear()
    _check_steps(schedule, steps_list)
    lam = gaussian_exact.power_law_spectrum(dim, alpha)
    for spacing in spacings:
        start = time.perf_counter()
        rows = gaussian_exact.exact_grid(lam, schedule, steps_list, etas, sigma_hat, spacing)
        seconds = time.perf_counter() - start
        title = f"Exact FD, Gaussian oracle (D = {dim}, alpha = {alpha:g}, {spacing} spacing)"
        click.echo(f"## {title}\n\n{reports.fd_markdown(rows)}\ncomputed in {seconds:.2f} s\n")
        if out_dir is not None:
            meta = {"dim": dim, "alpha": alpha, "spacing": spacing, "seconds": seconds}
            reports.write_fd_grid(rows, out_dir, f"oracle-{spacing}", meta, title)


@eval_group.command("table1")
@run_options(n=1000)
@steps_list("10,20,50,100")
@grid_rows
@_opt(
    "--features", type=click.Choice(metrics.FEATURES), default="mnist",
    help="mnist: the bundled classifier (FD-MNIST); inception: FID (ddim[fid]); pixels",
)  # fmt: skip
@_opt("--ref-data", metavar="PATH", help="reference images: an MNIST idx3 file, .npz or folder")
@_opt("--ref-slice", type=Slice(), default=":", help="which reference images, START:STOP")
@_opt("--ref-stats", type=click.Path(dir_okay=False), help="precomputed statistics (.npz)")
def table1_command(
    ckpt: str,
    spacing: str,
    batch_size: int,
    device: torch.device,
    n: int,
    seed: int,
    out_dir: str,
    steps_list: list[int],
    etas: list[float],
    sigma_hat: bool,
    features: str,
    ref_data: str | None,
    ref_slice: slice,
    ref_stats: str | None,
) -> None:
    """Table 1: Fréchet distance of n samples to reference statistics, per eta and S.

    Reference statistics come from --ref-stats, or from --ref-data (cached under
    $DDIM_CACHE/stats).
    """
    if (ref_data is None) == (ref_stats is None):
        raise click.UsageError("give exactly one of --ref-data and --ref-stats")
    device = init_from_env(device)
    model, schedule = common.load_model(ckpt, device)
    _check_steps(schedule, steps_list)
    shape = common.image_shape(model)
    feature_fn = metrics.feature_extractor(features, device)
    if ref_stats is not None:
        ref = metrics.FeatureStats.load(ref_stats)
    else:
        key = f"{Path(ref_data).resolve()}[{ref_slice.start}:{ref_slice.stop}]-{features}"
        ref = metrics.cached_stats(
            key,
            lambda: metrics.dataset_stats(
                feature_fn, _load_images(ref_data, ref_slice, shape), batch_size, device
            ),
        )
    rows = experiments.table1(
        model, schedule, steps_list, etas, sigma_hat, n, batch_size, feature_fn, ref, seed,
        shape=shape, spacing=spacing, device=device,
    )  # fmt: skip
    meta = {
        "title": f"Table 1 ({features} features, {spacing} spacing, n = {n})",
        "ckpt": ckpt, "features": features, "n": n, "seed": seed, "spacing": spacing,
        "ref": ref_stats or f"{ref_data}[{ref_slice.start}:{ref_slice.stop}]",
        "processes": world()[1],
    }  # fmt: skip
    if experiments.write_table1(rows, out_dir, meta):
        click.echo(reports.fd_markdown(rows) + f"\nwrote {out_dir}/table1.{{md,json,png}}")


@eval_group.command("table2")
@run_options(n=100)
@steps_list("10,20,50,100,200,500,1000")
@_opt("--data", required=True, metavar="PATH", help="images: an MNIST idx3 file, .npz or folder")
@_opt("--slice", "part", type=Slice(), default=":", help="which images, START:STOP")
def table2_command(
    ckpt: str,
    spacing: str,
    batch_size: int,
    device: torch.device,
    n: int,
    seed: int,
    out_dir: str,
    steps_list: list[int],
    data: str,
    part: slice,
) -> None:
    """Table 2: per-dimension MSE ([0, 1] pixels) of encode -> decode of the first n images."""
    model, schedule = common.load_model(ckpt, device)
    _check_steps(schedule, steps_list)
    x0 = _load_images(data, part, common.image_shape(model))[:n]
    mse = experiments.table2(
        model, schedule, x0, steps_list, spacing=spacing, batch_size=batch_size, device=device
    )
    meta = {"ckpt": ckpt, "data": f"{data}[{part.start}:{part.stop}]", "n": x0.shape[0]}
    experiments.write_table2(mse, out_dir, meta | {"spacing": spacing})
    click.echo(reports.mse_markdown(mse) + f"\nwrote {out_dir}/table2.{{md,json}}")


@eval_group.command("consistency")
@run_options(n=100)
@steps_list("10,20,50,100")
@_opt("--ref-steps", type=click.IntRange(min=1), default=1000, help="the reference S")
@_opt("--show", type=click.IntRange(min=1), default=8, help="samples per row of the figure")
def consistency_command(
    ckpt: str,
    spacing: str,
    batch_size: int,
    device: torch.device,
    n: int,
    seed: int,
    out_dir: str,
    steps_list: list[int],
    ref_steps: int,
    show: int,
) -> None:
    """Figure 5: the same x_T decoded at each S, and how often the MNIST classifier's label
    at S matches its label at --ref-steps."""
    model, schedule = common.load_model(ckpt, device)
    _check_steps(schedule, [*steps_list, ref_steps])
    shape = common.image_shape(model)
    if shape != (1, 28, 28):
        raise ValueError(f"consistency labels come from the MNIST classifier; model is {shape}")
    agreement = experiments.consistency_figure(
        model, schedule, steps_list, load_classifier(device=device).predict, out_dir,
        shape=shape, n=n, show=show, ref_steps=ref_steps, seed=seed, spacing=spacing,
        batch_size=batch_size, device=device,
    )  # fmt: skip
    for s, frac in agreement.items():
        click.echo(f"S = {s}: {frac:.3f} of {n} labels match S = {ref_steps}")
    click.echo(f"wrote {out_dir}/consistency.{{png,json}}")


@eval_group.command("interpolation")
@run_options(n=8)
@_opt("--steps", type=click.IntRange(min=1), default=50, help="DDIM steps S")
def interpolation_command(
    ckpt: str,
    spacing: str,
    batch_size: int,
    device: torch.device,
    n: int,
    seed: int,
    out_dir: str,
    steps: int,
) -> None:
    """Figure 6: an n x n slerp grid between the x_T of seeds seed .. seed+3, decoded."""
    if n < 2:
        raise click.BadParameter("an interpolation grid needs n >= 2", param_hint="'-n'")
    model, schedule = common.load_model(ckpt, device)
    common.check_steps(schedule, steps)
    out = Path(out_dir) / "interpolation.png"
    experiments.interpolation_figure(
        model, schedule, out, shape=common.image_shape(model), frames=n, steps=steps,
        seed=seed, spacing=spacing, batch_size=batch_size, device=device,
    )  # fmt: skip
    click.echo(f"wrote {out}")
