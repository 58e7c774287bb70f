"""``ddim train``: the training loop of :mod:`ddim.train.loop`, from a YAML config.

The command itself, which :mod:`ddim.cli` registers and ``python -m ddim.train`` runs on
its own (:mod:`ddim.train.__main__`); it imports nothing heavy until it runs, and nothing of
the CLI. Its failures end as every command's (:mod:`ddim.exits`).
"""

from __future__ import annotations

import sys

import click

from ddim.exits import CONTEXT_SETTINGS, EXIT_INTERRUPTED, OneLineErrors


@click.command(
    "train",
    cls=OneLineErrors,
    context_settings=CONTEXT_SETTINGS,
    short_help="Train a model from a YAML config.",
)
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--set",
    "-o",
    "--override",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a config value, e.g. --set training.lr=1e-3 (repeatable)",
)
@click.option(
    "--resume",
    is_flag=True,
    help="continue from the latest checkpoint in out_dir (starts fresh if there is none)",
)
@click.option(
    "--init",
    default=None,
    metavar="CKPT",
    help="start from this checkpoint's EMA weights (a path or a bundled name such as mnist); "
    "the same as --set training.init=CKPT",
)
@click.option(
    "--accept-data-change",
    is_flag=True,
    help="with --resume: go on although the data differ from those the run started on",
)
@click.option("--no-progress", is_flag=True, help="hide the progress bar")
def train_command(
    config: str,
    overrides: tuple[str, ...],
    resume: bool,
    init: str | None,
    accept_data_change: bool,
    no_progress: bool,
) -> None:
    """Train an eps-model as CONFIG describes.

    Under torchrun: torchrun --nproc_per_node=K -m ddim.train CONFIG (the same command).

    Exits with 130 when SIGINT or SIGTERM stopped the run after a checkpoint was written
    (rerun with --resume to continue), and with 2 on a bad config or data set, a damaged
    checkpoint, or a non-finite loss (the last checkpoint is left intact).
    """
    from ddim.train.config import load_config
    from ddim.train.loop import train

    if init is not None:
        overrides = (*overrides, f"training.init={init}")
    result = train(load_config(config, overrides), resume=resume, progress=not no_progress,
                   accept_data_change=accept_data_change)  # fmt: skip
    if result.stopped_by:
        click.echo(f"stopped by {result.stopped_by} at step {result.step}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(f"finished at step {result.step}; weights: {result.weights}")
