"""``ddim data pack`` and ``ddim data verify``: a folder of images packed once into
memory-mapped uint8 shards (:mod:`ddim.formats.packed`), and a pack checked byte by byte."""

from __future__ import annotations

import time

import click

from ddim.cli import common
from ddim.names import PREPROCESSINGS


@click.group("data", cls=common.DdimGroup)
def data_group() -> None:
    """Prepare training data: pack an image folder, verify a pack."""


@data_group.command("pack")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--size", type=click.IntRange(min=1), required=True, help="side of the square images")
@click.option("--out", required=True, type=click.Path(), help="the pack's folder (must not exist)")
@click.option("--channels", type=click.Choice(["1", "3"]), default="3", show_default=True,
              help="1: grayscale, 3: RGB")  # fmt: skip
@click.option(
    "--preprocess",
    type=click.Choice(PREPROCESSINGS),
    default="center-crop",
    show_default=True,
    help="center-crop: centred square, bicubic; resize-crop: the official LSUN pipeline; "
    "celeba: the official CelebA crop box",
)
@click.option("--labels", is_flag=True, help="keep class labels from the class subfolders")
@click.option(
    "--strict", is_flag=True, help="stop at the first unreadable image instead of skipping it"
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="decoding processes (default: one per core but one, at most 8)",
)
def pack_command(
    folder: str,
    size: int,
    out: str,
    channels: str,
    preprocess: str,
    labels: bool,
    strict: bool,
    workers: int | None,
) -> None:
    """Decode every image under FOLDER once into uint8 shards in OUT, with a manifest.

    Train on it with data.kind: packed and data.path: OUT.
    """
    from ddim.formats.datasets import auto_workers
    from ddim.formats.image_sets import Reading
    from ddim.formats.packed import pack_folder

    if workers is None:
        workers = auto_workers()
    began = time.perf_counter()
    reading = Reading(size, int(channels), preprocess)
    manifest = pack_folder(folder, out, reading, labelled=labels, strict=strict, workers=workers)
    source = manifest["source"]
    skipped = source["skipped"]
    click.echo(f"{folder}: found {source['found']} images, skipped {len(skipped)}")
    for name, why in skipped[:5]:
        click.echo(f"  skipped {name}: {why}")
    classes = manifest["labels"]["classes"] if manifest["labels"] else ()
    with_classes = f" in {len(classes)} classes" if classes else ""
    click.echo(
        f"packed {manifest['count']} images{with_classes} into {len(manifest['shards'])} "
        f"shard(s) in {out} ({time.perf_counter() - began:.1f} s)"
    )


@data_group.command("verify")
@click.argument("pack", type=click.Path(exists=True, file_okay=False))
def verify_command(pack: str) -> None:
    """Hash every file of PACK against its manifest."""
    from ddim.formats.packed import verify_packed

    click.echo(f"{pack}: {verify_packed(pack)} images, every file matches its manifest")
