"""``ddim sample``: draw images with the generalized DDIM sampler."""

from __future__ import annotations

import click
import torch

from ddim import workflows
from ddim.cli import common
from ddim.formats import images
from ddim.sampling import VARIANCES


@click.command("sample", short_help="Sample images from a model.")
@common.ckpt_option
@common.steps_option
@common.spacing_option
@click.option(
    "--eta",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="eta of eq. 16: 0 is DDIM (deterministic), 1 is DDPM",
)
@click.option(
    "--variance",
    type=click.Choice(VARIANCES),
    default="ddim",
    show_default=True,
    help="ddim: sigma from --eta; ddpm-large: Table 1's sigma-hat row (ignores --eta)",
)
@click.option(
    "--clip/--no-clip",
    default=None,
    show_default="off for ddim, on for ddpm-large",
    help="clamp the predicted x0 to [-1, 1] at every step",
)
@click.option(
    "-n",
    "--num",
    "n",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="number of images",
)
@common.batch_size_option
@common.seed_option
@common.device_option
@click.option(
    "--out",
    default="samples.png",
    show_default=True,
    metavar="PATH",
    help="a .png grid, a .npz array (uint8 N,H,W,C) or a folder of PNGs (end it with /)",
)
@click.option(
    "--nrow",
    type=click.IntRange(min=1),
    default=None,
    show_default="a square grid",
    help="images per grid row",
)
@click.option(
    "--trajectory",
    default=None,
    metavar="PATH.gif",
    help="also write the denoising sequence of the whole grid as an animated GIF",
)
@click.option(
    "--trajectory-of",
    type=click.Choice(["xt", "x0"]),
    default="xt",
    show_default=True,
    help="animate the states x_t or the predictions of x0",
)
@common.force_option
def sample_command(
    ckpt: str,
    steps: int,
    spacing: str,
    eta: float,
    variance: str,
    clip: bool | None,
    n: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    out: str,
    nrow: int | None,
    trajectory: str | None,
    trajectory_of: str,
    force: bool,
) -> None:
    """Sample images from a model (the bundled MNIST model by default)."""
    common.check_image_output(out, n, force)
    if trajectory is not None:
        common.check_output(trajectory, (".gif",), "--trajectory", force)
    model, schedule = common.load_model(ckpt, device, [steps])
    total = common.bar_total(schedule, steps, spacing, n, batch_size)
    with common.progress(total, "sampling") as tick:
        result = workflows.generate(
            model,
            schedule,
            n,
            common.image_shape(model),
            seed=seed,
            batch_size=batch_size,
            device=device,
            options=workflows.SamplerOptions(steps, spacing, eta, variance, clip),
            return_trajectory=trajectory is not None,
            callback=tick,
        )
    x0 = result[0] if trajectory is not None else result
    click.echo(f"wrote {common.write_images(out, x0, nrow)}")
    if trajectory is not None:
        traj = result[1]
        frames = traj.xs if trajectory_of == "xt" else traj.x0_preds
        images.save_gif(trajectory, frames, nrow)
        click.echo(f"wrote {len(frames)} frames of {trajectory_of} to {trajectory}")
