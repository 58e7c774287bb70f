"""``ddim info``: what a checkpoint holds, without loading its weights."""

from __future__ import annotations

import json

import click

from ddim.cli import common
from ddim.formats.checkpoint import read_metadata


def _schedule_line(schedule: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in schedule.items() if k != "kind")
    return f"{schedule.get('kind', 'unknown')} ({params})"


@click.command("info", short_help="Show what a checkpoint holds.")
@click.argument("ckpt", default=common.DEFAULT_MODEL, metavar="[CKPT]")
@click.option("--json", "as_json", is_flag=True, help="print the metadata as JSON")
def info_command(ckpt: str, as_json: bool) -> None:
    """Show a checkpoint's model config, parameter count, schedule and training step
    (the bundled MNIST model by default)."""
    meta = read_metadata(ckpt)
    if as_json:
        click.echo(json.dumps(meta, indent=2, sort_keys=True))
        return
    config = ", ".join(f"{k}={v}" for k, v in meta["model_config"].items())
    lines = [
        ("checkpoint", meta["path"]),
        ("written by", f"ddim {meta['ddim_version']} (format {meta['format_version']})"),
        ("model", f"UNet({config})"),
        ("parameters", f"{meta['num_parameters']:,}"),
        ("data shape", "x".join(str(d) for d in meta["data_shape"])),
        ("schedule", _schedule_line(meta["schedule"])),
        ("training step", str(meta["step"])),
        ("weights", ", ".join(meta["weights"])),
    ]
    if meta["extra"]:
        lines.append(("extra", json.dumps(meta["extra"], sort_keys=True)))
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")
