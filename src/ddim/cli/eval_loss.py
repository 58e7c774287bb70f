"""``ddim eval loss``: the held-out denoising loss (:mod:`ddim.eval.heldout_loss`) of one or
more checkpoints, e.g. every checkpoint of a training run, on the same fixed noise."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ddim.cli import options
from ddim.cli.eval_options import NumberList, Slice, load_images
from ddim.cli.options import option
from ddim.names import HELDOUT_TIMESTEPS

if TYPE_CHECKING:
    import torch

_DEFAULT_TIMESTEPS = ",".join(map(str, HELDOUT_TIMESTEPS))


@click.command("loss")
@click.argument("ckpts", nargs=-1, metavar="[CKPT]...")
@option("--data", required=True, metavar="PATH", help="held-out images: MNIST idx3, .npz or folder")
@option("--slice", "part", type=Slice(), default=":", help="which images of --data, START:STOP")
@option("--timesteps", type=NumberList(int, 0), default=_DEFAULT_TIMESTEPS, help="t's to score")
@option("--weights", type=click.Choice(("ema", "model")), default="ema", help="which weights")
@option("--seed", type=click.IntRange(min=0), default=0, help="seed of the fixed noise")
@options.batch_size_option
@options.device_option
@option("--out-dir", type=click.Path(file_okay=False), default="results", help="output folder")
def loss_command(
    ckpts: tuple[str, ...],
    data: str,
    part: slice,
    timesteps: list[int],
    weights: str,
    seed: int,
    batch_size: int,
    device: torch.device,
    out_dir: str,
) -> None:
    """L_simple (eq. 14 of Ho et al.) of each CKPT (the bundled MNIST model by default) on
    held-out images at fixed t, with the same noise for every checkpoint; lower is better.
    Writes loss.md and loss.json."""
    from ddim.eval.heldout_loss import heldout_loss
    from ddim.eval.reports import write_json
    from ddim.formats.atomic import atomic_write_text
    from ddim.formats.checkpoint import load_checkpoint, read_metadata

    head = " | ".join(f"t = {t}" for t in timesteps)
    lines = [f"| checkpoint | step | mean | {head} |", "|---|---:|---:|" + "---:|" * len(timesteps)]
    rows = []
    ckpts = ckpts or (options.DEFAULT_MODEL,)
    shapes = {tuple(read_metadata(c)["data_shape"]) for c in ckpts}  # all checked before scoring
    if len(shapes) != 1:
        raise ValueError(f"the checkpoints take images of different shapes: {sorted(shapes)}")
    x0 = load_images(data, part, shapes.pop())
    for ckpt in ckpts:
        loaded = load_checkpoint(ckpt)
        model = loaded.unet(weights).to(device)
        loss = heldout_loss(
            model, loaded.schedule, x0, timesteps, seed=seed, batch_size=batch_size, device=device
        )
        rows.append({"ckpt": ckpt, "step": loaded.step, **loss.to_dict()})
        cells = " | ".join(f"{v:.5f}" for v in loss.per_t)
        lines.append(f"| {ckpt} | {loaded.step} | {loss.mean:.5f} | {cells} |")
        click.echo(lines[-1])
    meta = {"data": f"{data}[{part.start}:{part.stop}]", "n": int(x0.shape[0])}
    meta |= {"weights": weights, "seed": seed, "timesteps": timesteps}
    out = Path(out_dir)
    write_json(out / "loss.json", {"meta": meta, "rows": rows})
    title = f"# Held-out L_simple ({weights} weights, {meta['n']} images of {meta['data']})"
    atomic_write_text(out / "loss.md", title + "\n\n" + "\n".join(lines) + "\n")
    click.echo(f"wrote {out}/loss.{{md,json}}")
