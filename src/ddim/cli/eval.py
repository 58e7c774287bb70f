"""``ddim eval``: the paper's Table 1, Table 2, Figures 5 and 6, the exact oracle grid,
merging grids computed in pieces, the real-data floor of FD (:mod:`ddim.cli.eval_floor`) and
the sample checks of :mod:`ddim.cli.eval_checks`.

``table1`` also runs sharded, e.g. ``torchrun --nproc_per_node=4 $(which ddim) eval table1``:
each process samples its share of the images and rank 0 writes the results.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ddim.cli import common, options
from ddim.cli.eval_checks import blobs_command, memorization_command
from ddim.cli.eval_floor import floor_command
from ddim.cli.eval_guidance import guidance_command
from ddim.cli.eval_inpaint import inpaint_command
from ddim.cli.eval_judge import judge_command
from ddim.cli.eval_landing import landing_command
from ddim.cli.eval_loss import loss_command
from ddim.cli.eval_options import (
    Judging,
    Run,
    Slice,
    grid_rows,
    judge_options,
    load_images,
    reference_options,
    reference_stats,
    run_options,
    steps_list,
)  # fmt: skip
from ddim.cli.eval_solvers import solvers_command
from ddim.cli.options import option
from ddim.cli.run_options import edict_p_option, steps_option
from ddim.names import EXACT_SOLVERS, SPACINGS


def _write_table1(rows: Sequence[Any], out_dir: str, meta: dict[str, Any]) -> None:
    """Write ``table1.{md,json,png}`` and print the table (on rank 0 only)."""
    from ddim.eval import experiments, reports

    if experiments.write_table1(rows, out_dir, meta):
        click.echo(reports.fd_markdown(rows) + f"\nwrote {out_dir}/table1.{{md,json,png}}")


def _write_table2(rows: dict[str, dict[int, float]], out_dir: str, meta: dict[str, Any]) -> None:
    """Write ``table2.{md,json}`` and print the table."""
    from ddim.eval import experiments, reports

    experiments.write_table2(rows, out_dir, meta)
    click.echo(reports.mse_markdown(rows) + f"\nwrote {out_dir}/table2.{{md,json}}")


@click.group("eval", cls=common.DdimGroup)
def eval_group() -> None:
    """Reproduce the paper's experiments: Table 1 and 2, Figures 5 and 6, an exact oracle."""


eval_group.add_command(blobs_command)
eval_group.add_command(floor_command)
eval_group.add_command(guidance_command)
eval_group.add_command(inpaint_command)
eval_group.add_command(judge_command)
eval_group.add_command(landing_command)
eval_group.add_command(memorization_command)
eval_group.add_command(loss_command)
eval_group.add_command(solvers_command)


@eval_group.command("oracle")
@steps_list("10,20,50,100,1000")
@grid_rows
@option(
    "--spacing", "spacings", type=click.Choice(SPACINGS), multiple=True,
    default=["uniform", "quad"], help="timestep spacing (repeat for several)",
)  # fmt: skip
@option("--dim", type=click.IntRange(min=1), default=3072, help="data dimension D")
@option("--alpha", type=click.FloatRange(min=0.0), default=1.0, help="lambda_k = k^-alpha")
@option("--out-dir", type=click.Path(file_okay=False), default=None, help="also write files here")
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
    from ddim.eval import exact_gaussian as gaussian_exact
    from ddim.eval import reports
    from ddim.schedule import NoiseSchedule

    schedule = NoiseSchedule.linear()
    for steps in steps_list:
        options.check_steps(schedule, steps)
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
@steps_list("10,20,50,100,1000")
@grid_rows
@reference_options
@option(
    "--progress", type=click.Path(file_okay=False), default=None,
    help="keep each finished batch's statistics in this folder; a rerun resumes from them",
)  # fmt: skip
@judge_options
def table1_command(
    run: Run,
    steps_list: list[int],
    etas: list[float],
    sigma_hat: bool,
    features: str,
    ref_data: str | None,
    ref_slice: slice,
    ref_stats: str | None,
    progress: str | None,
    judging: Judging,
) -> None:
    """Table 1: Fréchet distance of n samples to reference statistics, per eta and S.

    Reference statistics come from --ref-stats, or from --ref-data (cached under
    $DDIM_CACHE/stats). With --progress, a killed run, rerun with the same options, samples
    only the batches it had not finished, and gives the same numbers as an unbroken run.
    With --judges, each cell is also scored by those judges, with intervals
    (table1-judges.{md,json}).
    """
    from ddim.distributed import init_from_env, world
    from ddim.eval import experiments, metrics
    from ddim.eval.progress import BatchStore, weights_digest
    from ddim.precision import choose

    if (ref_data is None) == (ref_stats is None):
        raise click.UsageError("give exactly one of --ref-data and --ref-stats")
    if judging.judges and progress is not None:
        raise click.UsageError("--judges needs every sample; it cannot resume from --progress")
    run = dataclasses.replace(run, device=init_from_env(run.device))
    model, schedule, shape = run.prepare(steps_list)
    panel = judging.panel(ref_data, ref_slice, shape, run.device)
    feature_fn = metrics.feature_extractor(features, run.device)
    ref = reference_stats(feature_fn, features, ref_data, ref_slice, ref_stats, shape, run)
    precision = choose(run.precision, run.device)[0]
    store = None
    if progress is not None:
        what = f"weights={weights_digest(model)}|features={features}|seed={run.seed}"
        store = BatchStore(Path(progress), f"{what}|precision={precision}")
        kept = len(list(store.folder.glob("*/*.npz")))
        if kept and world()[0] == 0:
            click.echo(f"resuming: {kept} finished batches kept in {progress}", err=True)
    rows = experiments.table1(
        model, schedule, steps_list, etas, sigma_hat, run.n, run.batch_size, feature_fn, ref,
        run.seed, shape=shape, options=run.sampler(50), device=run.device, store=store,
        tap=panel and panel.tap,
    )  # fmt: skip
    meta = {
        "title": f"Table 1 ({features} features, {run.spacing} spacing, n = {run.n})",
        "ckpt": run.ckpt, "features": features, "n": run.n, "seed": run.seed,
        "spacing": run.spacing, "precision": precision,
        "processes": world()[1],
        "ref": ref_stats or f"{ref_data}[{ref_slice.start}:{ref_slice.stop}]",
    }  # fmt: skip
    _write_table1(rows, run.out_dir, meta)
    if panel is not None:
        click.echo(panel.write(run.out_dir, "table1", judging.keep)
                   + f"wrote {run.out_dir}/table1-judges.{{md,json}}")  # fmt: skip


@eval_group.command("table2")
@run_options(n=100)
@steps_list("10,20,50,100,200,500,1000")
@option("--data", required=True, metavar="PATH", help="images: an MNIST idx3 file, .npz or folder")
@option("--slice", "part", type=Slice(), default=":", help="which images, START:STOP")
@option(
    "--solvers", type=click.Choice(("ddim", *EXACT_SOLVERS)), multiple=True, default=["ddim"],
    help="the encodings, a row each (repeat: --solvers ddim --solvers bdia)",
)  # fmt: skip
@edict_p_option
def table2_command(
    run: Run, steps_list: list[int], data: str, part: slice, solvers: tuple[str, ...],
    edict_p: float | None,
) -> None:  # fmt: skip
    """Table 2: per-dimension MSE ([0, 1] pixels) of encode -> decode of the first n images,
    for each encoding of --solvers: read as the decoder gives it (the paper's reading) and
    clamped to [-1, 1] as a saved image is. --edict-p applies to the edict rows."""
    from ddim.eval import experiments

    model, schedule, shape = run.prepare(steps_list)
    x0 = load_images(data, part, shape)[: run.n]
    mse = experiments.table2(
        model, schedule, x0, steps_list, options=run.sampler(50), solvers=solvers,
        edict_p=edict_p, batch_size=run.batch_size, device=run.device,
    )  # fmt: skip
    meta = {"ckpt": run.ckpt, "data": f"{data}[{part.start}:{part.stop}]", "n": x0.shape[0]}
    if "edict" in solvers:
        meta["edict_p"] = edict_p  # None: EDICT's default at each S
    _write_table2(mse, run.out_dir, meta | {"spacing": run.spacing})


@eval_group.command("consistency")
@run_options(n=100)
@steps_list("10,20,50,100")
@option("--ref-steps", type=click.IntRange(min=1), default=1000, help="the reference S")
@option("--show", type=click.IntRange(min=1), default=8, help="samples per row of the figure")
def consistency_command(run: Run, steps_list: list[int], ref_steps: int, show: int) -> None:
    """Figure 5: the same x_T decoded at each S, and how often the MNIST classifier's label
    at S matches its label at --ref-steps."""
    from ddim.eval import experiments
    from ddim.models.classifier import load_classifier

    model, schedule, shape = run.prepare([*steps_list, ref_steps])
    if shape != (1, 28, 28):
        raise ValueError(f"consistency labels come from the MNIST classifier; model is {shape}")
    agreement = experiments.consistency_figure(
        model, schedule, steps_list, load_classifier(device=run.device).predict, run.out_dir,
        shape=shape, n=run.n, show=show, ref_steps=ref_steps, seed=run.seed,
        options=run.sampler(50), batch_size=run.batch_size, device=run.device,
    )  # fmt: skip
    for s, frac in agreement.items():
        click.echo(f"S = {s}: {frac:.3f} of {run.n} labels match S = {ref_steps}")
    click.echo(f"wrote {run.out_dir}/consistency.{{png,json}}")


@eval_group.command("interpolation")
@run_options(n=8)
@steps_option
def interpolation_command(run: Run, steps: int) -> None:
    """Figure 6: an n x n slerp grid between the x_T of seeds seed .. seed+3, decoded."""
    from ddim.eval import experiments

    if run.n < 2:
        raise click.BadParameter("an interpolation grid needs n >= 2", param_hint="'-n'")
    model, schedule, shape = run.prepare([steps])
    out = Path(run.out_dir) / "interpolation.png"
    experiments.interpolation_figure(
        model, schedule, out, shape=shape, frames=run.n, seed=run.seed,
        options=run.sampler(steps), batch_size=run.batch_size, device=run.device,
    )  # fmt: skip
    click.echo(f"wrote {out}")


@eval_group.command("merge")
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@option("--out-dir", type=click.Path(file_okay=False), required=True, help="output folder")
def merge_command(results: tuple[str, ...], out_dir: str) -> None:
    """Join the table1.json (or table2.json) files of separate runs into one table.

    For grids computed in pieces, e.g. the S = 1000 cells on another day or machine. The
    runs must share the checkpoint, n, seed, spacing and reference (or images).
    """
    from ddim.eval import reports

    docs = {}
    for path in results:
        if path in docs:
            raise ValueError(f"{path} is given twice")
        try:
            docs[path] = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not JSON ({e.msg}, line {e.lineno})") from None
    kind, cells, meta = reports.merge_results(docs)
    (_write_table1 if kind == "table1" else _write_table2)(cells, out_dir, meta)
