"""``ddim info``: what a checkpoint holds, without loading its weights."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import click

from ddim.cli import options

#: The job ``ddim info --speed`` describes: ``ddim sample -n 1000`` at its defaults.
SPEED_JOB = 1000

if TYPE_CHECKING:
    import torch


def _schedule_line(schedule: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in schedule.items() if k != "kind")
    return f"{schedule.get('kind', 'unknown')} ({params})"


def _value(value: Any) -> str:
    """A leaf of the metadata as YAML writes it inline: strings bare, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _nested_lines(section: Mapping[str, Any], indent: int) -> Iterator[str]:
    """``key: value`` lines of a nested mapping, each section's keys indented under it."""
    pad = " " * indent
    for key, value in section.items():
        if isinstance(value, Mapping) and value:
            yield f"{pad}{key}:"
            yield from _nested_lines(value, indent + 2)
        else:
            yield f"{pad}{key}: {_value(value)}"


@click.command("info", short_help="Show what a checkpoint holds.")
@click.argument("ckpt", default=options.DEFAULT_MODEL, metavar="[CKPT]")
@click.option("--json", "as_json", is_flag=True, help="print the metadata as JSON")
@options.device_option
@click.option(
    "--speed",
    is_flag=True,
    help=f"also say how `ddim sample -n {SPEED_JOB}` runs the model here, and why "
    "(loads it, and measures it once per machine)",
)
def info_command(ckpt: str, as_json: bool, device: torch.device, speed: bool) -> None:
    """Show a checkpoint's model config, parameter count, schedule and training step
    (the bundled MNIST model by default), and what --precision auto picks on --device."""
    from ddim.formats.checkpoint import read_metadata
    from ddim.precision import choose

    meta = read_metadata(ckpt)
    chosen, why = choose("auto", device)
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
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")
    if meta["extra"]:
        click.echo("extra:")
        for line in _nested_lines(meta["extra"], 2):
            click.echo(line)
    click.echo(f"--precision auto on {device} runs {chosen}: {why}")
    if speed:
        from ddim.sampling import SamplerOptions

        model, schedule = options.load_model(ckpt, device)
        auto = options.auto_speed(
            model, schedule, SamplerOptions(precision="auto"), SPEED_JOB, 64, device, (None, None)
        )
        click.echo(
            f"ddim sample -n {SPEED_JOB} (50 steps, batches of 64) on {device} runs "
            f"{auto.setting.describe()}: {auto.why}"
        )
