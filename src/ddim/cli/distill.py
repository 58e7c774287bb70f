"""``ddim distill``: progressive distillation of :mod:`ddim.train.distill`, from a YAML config."""

from __future__ import annotations

import sys

import click

from ddim.exits import EXIT_INTERRUPTED


@click.command("distill", short_help="Distil a model into a few-step student (Salimans & Ho).")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--set",
    "-o",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a config value, e.g. --set training.total_steps=500 (repeatable)",
)
@click.option("--resume", is_flag=True, help="continue the rounds in out_dir where they stopped")
@click.option("--no-progress", is_flag=True, help="hide the progress bar")
def distill_command(
    config: str, overrides: tuple[str, ...], resume: bool, no_progress: bool
) -> None:
    """Distil CONFIG's teacher round by round, each student taking half its teacher's steps.

    Every round writes <out_dir>/round-<r>-<N>steps/student.safetensors, a checkpoint that
    records its N-step plan: `ddim sample --ckpt` on it needs no --steps. Exits with 130 when
    SIGINT or SIGTERM stopped a round after a checkpoint (rerun with --resume), and with 2 on
    a bad config, a teacher that does not fit, or a non-finite loss.
    """
    from ddim.train.distill import distill
    from ddim.train.distill_config import load_distill_config

    result = distill(load_distill_config(config, overrides), resume=resume,
                     progress=not no_progress)  # fmt: skip
    if result.stopped_by:
        click.echo(f"stopped by {result.stopped_by} in round {result.round} at step "
                   f"{result.step}", err=True)  # fmt: skip
        sys.exit(EXIT_INTERRUPTED)
    for path in result.students:
        click.echo(f"student: {path}")
