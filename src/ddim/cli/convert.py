"""``ddim convert``: weights between the official, pesser, diffusers and ddim formats."""

from __future__ import annotations

import click

from ddim.cli import common, options
from ddim.cli.options import choice_option
from ddim.names import CONVERT_SOURCES, CONVERT_TARGETS, WEIGHT_DTYPES


@click.command("convert", short_help="Convert weights between formats.")
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.option(
    "--from",
    "src_format",
    type=click.Choice(CONVERT_SOURCES),
    required=True,
    help="official: DDIM ckpt.pth; pesser: model-*.ckpt; ours: .safetensors; "
    "diffusers: a pipeline or UNet2DModel folder",
)
@click.option(
    "--to",
    "dst_format",
    type=click.Choice(CONVERT_TARGETS),
    required=True,
    help="ours: a .safetensors checkpoint (EMA weights); diffusers: a DDPMPipeline folder",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML config of official/pesser weights (official DDIM or ddim training config)  "
    "[default: the official CIFAR-10 model]",
)
@choice_option(
    "--which",
    ["ema", "model"],
    default="ema",
    help="the EMA or the raw training weights, where the source has both",
)
@choice_option(
    "--dtype",
    list(WEIGHT_DTYPES),
    default="fp32",
    help="store the weights of a ddim checkpoint in 16 bits (half the file; computed in fp32)",
)
@options.force_option
def convert_command(
    src: str,
    dst: str,
    src_format: str,
    dst_format: str,
    config: str | None,
    which: str,
    dtype: str,
    force: bool,
) -> None:
    """Convert the weights in SRC to DST; the result computes the same eps (up to the
    rounding of its weights, with --dtype fp16 or bf16)."""
    from ddim.formats import convert

    if dst_format == "ours":
        common.check_output(dst, (".safetensors",), "DST", force)
    else:
        common.check_absent(dst, force)
    if config is not None and src_format not in ("official", "pesser"):
        raise click.UsageError("--config applies to --from official or pesser only")
    if dtype != "fp32" and dst_format != "ours":
        raise click.UsageError("--dtype applies to --to ours only")
    loaded = convert.convert(
        src, dst, src_format, dst_format, config=config, which=which, overwrite=force, dtype=dtype
    )
    n = sum(p.numel() for p in loaded.model.parameters())
    click.echo(f"wrote {dst} ({dst_format}, {n:,} parameters)")
