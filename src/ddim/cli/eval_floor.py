"""``ddim eval floor``: the FD that real training images score against the reference at the
sample count of Table 1 (:mod:`ddim.eval.floor`), the yardstick for a model's FD."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ddim.cli import options
from ddim.cli.eval_options import Slice, features_option, load_images
from ddim.cli.options import option

if TYPE_CHECKING:
    import torch


@click.command("floor")
@option(
    "--data", required=True, metavar="PATH", help="the training images: MNIST idx3, .npz or folder"
)
@option("--slice", "part", type=Slice(), default=":", help="which images trained the model")
@option("--ref-data", metavar="PATH", help="reference images [default: --data]")
@option("--ref-slice", type=Slice(), required=True, help="which reference images, START:STOP")
@features_option
@option("-n", "n", type=click.IntRange(min=2), default=1000, help="images per draw")
@option("--draws", type=click.IntRange(min=1), default=10, help="random draws of n images")
@option("--seed", type=click.IntRange(min=0), default=0, help="draw i uses seed + i")
@option("--channels", type=click.IntRange(min=1), default=1, help="image channels")
@option("--image-size", type=click.IntRange(min=1), default=28, help="image height and width")
@options.batch_size_option
@options.device_option
@option("--out-dir", type=click.Path(file_okay=False), default="results", help="output folder")
def floor_command(
    data: str,
    part: slice,
    ref_data: str | None,
    ref_slice: slice,
    features: str,
    n: int,
    draws: int,
    seed: int,
    channels: int,
    image_size: int,
    batch_size: int,
    device: torch.device,
    out_dir: str,
) -> None:
    """The real-data floor of FD: n training images drawn at random, --draws times, and
    each block of n consecutive ones, scored against the reference images. Writes
    floor.json."""
    from ddim.eval import metrics
    from ddim.eval.floor import real_data_floor
    from ddim.eval.reports import write_json

    shape = (channels, image_size, image_size)
    ref_data = ref_data or data
    feature_fn = metrics.feature_extractor(features, device)
    ref = metrics.dataset_stats(
        feature_fn, load_images(ref_data, ref_slice, shape), batch_size, device
    )
    train = load_images(data, part, shape)
    floor = real_data_floor(
        lambda x: feature_fn(x.to(device)), train, ref, n, draws, seed, batch_size
    )
    meta = {
        "data": f"{data}[{part.start}:{part.stop}]", "features": features,
        "ref": f"{ref_data}[{ref_slice.start}:{ref_slice.stop}]",
    }  # fmt: skip
    s = floor.summary()
    click.echo(
        f"{draws} random draws of {n}: FD mean {s['mean']:.2f} (std {s['std']:.2f}, "
        f"min {s['min']:.2f}, max {s['max']:.2f})"
    )
    for start, stop, fd in floor.blocks:
        click.echo(f"images {start}:{stop} of the slice: FD {fd:.2f}")
    out = Path(out_dir) / "floor.json"
    write_json(out, {"meta": meta, **floor.to_dict()})
    click.echo(f"wrote {out}")
