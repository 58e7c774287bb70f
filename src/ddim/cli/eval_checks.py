"""``ddim eval blobs`` and ``ddim eval memorization``: checks of a model's samples that FD
alone does not make — how many are blobs no real digit resembles, and whether any copy a
training image.

Both draw ``-n`` samples the way ``ddim eval table1`` does (sample ``i`` from seed
``--seed + i``), or score images given with ``--samples`` (an ``.npz`` or folder, e.g. the
output of ``ddim sample --out DIR``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ddim.cli.eval_options import NumberList, Run, Slice, load_images, run_options
from ddim.cli.options import option
from ddim.cli.run_options import eta_option, steps_option

if TYPE_CHECKING:
    import torch


def sample_source(f: Any) -> Any:
    """``--steps``, ``--eta`` and ``--samples``: which samples a check scores."""
    f = option(
        "--samples",
        "samples_path",
        metavar="PATH",
        help="score these images (.npz or folder) instead of drawing -n samples",
    )(f)
    return steps_option(eta_option(f))


def _samples(run: Run, steps: int, eta: float, samples_path: str | None) -> torch.Tensor:
    """The first ``run.n`` of ``--samples``, or ``run.n`` fresh samples from ``--ckpt``."""
    from ddim.workflows import generate

    model, schedule, shape = run.prepare([] if samples_path else [steps])
    if samples_path is not None:
        x = load_images(samples_path, slice(None), shape)
        if x.shape[0] < run.n:
            raise ValueError(f"{samples_path} holds {x.shape[0]} images; -n asks for {run.n}")
        return x[: run.n]
    sampler = run.sampler(steps, eta=eta)
    x = generate(
        model, schedule, run.n, shape, seed=run.seed, batch_size=run.batch_size,
        device=run.device, options=sampler,
    )  # fmt: skip
    return x.cpu()


def _part(path: str, part: slice) -> str:
    """``PATH[START:STOP]``, as the results record a slice of a file."""
    return f"{path}[{part.start}:{part.stop}]"


def _meta(run: Run, steps: int, eta: float, samples_path: str | None) -> dict[str, Any]:
    if samples_path is not None:
        return {"samples": samples_path, "n": run.n}
    return {
        "ckpt": run.ckpt, "n": run.n, "seed": run.seed, "steps": steps, "eta": eta,
        "spacing": run.spacing, "precision": run.precision,
    }  # fmt: skip


@click.command("blobs")
@run_options(n=1000)
@sample_source
@option("--ref-data", required=True, metavar="PATH", help="real images that set the ranges")
@option("--ref-slice", type=Slice(), default=":", help="which reference images, START:STOP")
@option("--heldout-slice", type=Slice(), help="also score these real images of --ref-data")
@option("--percentiles", type=NumberList(float, 0.0), default="0.1,99.9", help="LOWER,UPPER")
@option("--border", type=click.IntRange(min=1), default=3, help="width of the border frame, px")
def blobs_command(
    run: Run,
    steps: int,
    eta: float,
    samples_path: str | None,
    ref_data: str,
    ref_slice: slice,
    heldout_slice: slice | None,
    percentiles: list[float],
    border: int,
) -> None:
    """The share of samples whose mean brightness or background level (the mean of the
    border frame) lies outside the [LOWER, UPPER] percentile range of the real images."""
    from ddim.eval.blobs import BlobRule
    from ddim.eval.reports import write_json
    from ddim.formats.images import save_png

    if len(percentiles) != 2:
        raise click.BadParameter("give two percentiles, LOWER,UPPER", param_hint="'--percentiles'")
    x = _samples(run, steps, eta, samples_path)
    shape = tuple(x.shape[1:])
    rule = BlobRule.from_reference(
        load_images(ref_data, ref_slice, shape), tuple(percentiles), border
    )
    blobs = rule.is_blob(x)
    result: dict[str, Any] = {
        "meta": _meta(run, steps, eta, samples_path) | {"ref": _part(ref_data, ref_slice)},
        "rule": rule.to_dict(),
        "blobs": int(blobs.sum()),
        "rate": rule.rate(x),
    }  # fmt: skip
    click.echo(rule.describe())
    click.echo(f"samples: {result['blobs']} of {run.n} are blobs ({100 * result['rate']:.2f} %)")
    if heldout_slice is not None:
        real = load_images(ref_data, heldout_slice, shape)
        result["heldout_rate"] = rule.rate(real)
        click.echo(f"held-out real images: {100 * result['heldout_rate']:.2f} % of {real.shape[0]}")
    out = Path(run.out_dir)
    write_json(out / "blobs.json", result)
    wrote = ["blobs.json"]
    if result["blobs"]:
        save_png(out / "blobs.png", x[blobs][:64])
        wrote.append("blobs.png")
    click.echo(f"wrote {', '.join(str(out / w) for w in wrote)}")


@click.command("memorization")
@run_options(n=1000)
@sample_source
@option("--train-data", required=True, metavar="PATH", help="the images the model was trained on")
@option("--train-slice", type=Slice(), default=":", help="which images trained it, START:STOP")
@option(
    "--heldout-slice", type=Slice(), required=True, help="real images of --train-data it never saw"
)
@option("--pairs", type=click.IntRange(min=1), default=32, help="closest pairs to show")
def memorization_command(
    run: Run,
    steps: int,
    eta: float,
    samples_path: str | None,
    train_data: str,
    train_slice: slice,
    heldout_slice: slice,
    pairs: int,
) -> None:
    """The distance from each sample, and from each held-out real image, to its nearest
    training image (L2, pixels in [0, 1]), as quantiles, a histogram, and a grid of the
    closest sample (top) / training image (bottom) pairs."""
    from ddim.eval.memorization import histogram_png, memorization
    from ddim.eval.reports import write_json
    from ddim.formats.atomic import atomic_write_bytes, atomic_write_text
    from ddim.formats.images import save_png, stack_rows

    x = _samples(run, steps, eta, samples_path)
    shape = tuple(x.shape[1:])
    train = load_images(train_data, train_slice, shape)
    report = memorization(x, train, load_images(train_data, heldout_slice, shape))
    summary = report.summary()
    lines = ["| quantile | samples | held-out real |", "|---|---:|---:|"]
    for key, value in summary["samples"].items():
        lines.append(f"| {key[1:]} | {value:.3f} | {summary['heldout'][key]:.3f} |")
    share = summary["samples_closer_than_any_heldout"]
    lines.append(
        f"\nsamples closer to the training set than any held-out image: {100 * share:.2f} %"
    )
    table = "\n".join(lines)
    out = Path(run.out_dir)
    meta = _meta(run, steps, eta, samples_path) | {
        "train": f"{train_data}[{train_slice.start}:{train_slice.stop}]"
    }
    write_json(out / "memorization.json", {"meta": meta, **summary})
    atomic_write_text(out / "memorization.md", f"# {summary['metric']}\n\n{table}\n")
    atomic_write_bytes(
        out / "memorization_hist.png", histogram_png(report, title=str(meta.get("ckpt", "")))
    )
    top, neighbours = report.closest_pairs(x, train, min(pairs, run.n))
    ncols = min(8, top.shape[0])
    save_png(out / "memorization_pairs.png", stack_rows(top, neighbours, ncols), nrow=ncols)
    click.echo(table)
    click.echo(
        f"wrote {out}/memorization.{{json,md}}, memorization_hist.png, memorization_pairs.png"
    )
