"""The ``ddim`` command: ``ddim sample``, ``encode``, ``reconstruct``, ``interpolate``,
``edit``, ``inpaint``, ``translate``, ``train``, ``distill``, ``data``, ``convert``, ``info``,
``serve`` and ``eval`` (``ddim COMMAND --help`` for each)."""

from __future__ import annotations

import click

from ddim import __version__
from ddim.cli.common import DdimGroup
from ddim.cli.convert import convert_command
from ddim.cli.data import data_group
from ddim.cli.distill import distill_command
from ddim.cli.edit import edit_command, inpaint_command, translate_command
from ddim.cli.encode import encode_command, reconstruct_command
from ddim.cli.eval import eval_group
from ddim.cli.info import info_command
from ddim.cli.interpolate import interpolate_command
from ddim.cli.sample import sample_command
from ddim.cli.serve import serve_command
from ddim.exits import CONTEXT_SETTINGS
from ddim.train.command import train_command


@click.group("ddim", cls=DdimGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="ddim")
def main() -> None:
    """Denoising diffusion implicit models: sample, encode, interpolate, train, convert.

    Errors print one line 'error: ...' and exit with status 2.
    """


for command in (
    sample_command,
    encode_command,
    reconstruct_command,
    interpolate_command,
    edit_command,
    inpaint_command,
    translate_command,
    train_command,
    distill_command,
    data_group,
    convert_command,
    info_command,
    serve_command,
    eval_group,
):
    main.add_command(command)
