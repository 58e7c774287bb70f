"""``ddim interpolate``: decode slerps between latents of seeds or encoded images."""

from __future__ import annotations

import click

from ddim.cli import common, options
from ddim.cli.encode import Encoding, encoding_options
from ddim.cli.options import count_option, out_option

SEED = click.IntRange(0, options.MAX_SEED)
IMAGE = click.Path(exists=True, dir_okay=False)


@click.command("interpolate", short_help="Decode slerps between two (or four) latents.")
@click.option(
    "--seeds",
    type=(SEED, SEED),
    multiple=True,
    metavar="A B",
    help="interpolate between the x_T of two seeds (seed s gives image 0 of "
    "'ddim sample --seed s'); with --grid give it twice: top pair, then bottom pair",
)
@click.option(
    "--images",
    "image_pairs",
    type=(IMAGE, IMAGE),
    multiple=True,
    metavar="A.png B.png",
    help="interpolate between two images, encoded first; with --grid give it twice",
)
@click.option(
    "--grid",
    is_flag=True,
    help="the paper's 2-D interpolation between four corners: FRAMES x FRAMES images",
)
@count_option(
    "--frames",
    minimum=2,
    default=10,
    help="images along each interpolation (the ends included)",
)
@out_option(
    "interpolation.png", "PATH.png", "a strip (or, with --grid, a grid) of the decoded images"
)
@click.option("--gif", default=None, metavar="PATH.gif", help="also write the strip as a GIF")
@options.steps_option
@encoding_options
@options.model_options
@options.force_option
def interpolate_command(
    seeds: tuple[tuple[int, int], ...],
    image_pairs: tuple[tuple[str, str], ...],
    grid: bool,
    frames: int,
    out: str,
    gif: str | None,
    steps: int,
    encoding: Encoding,
    force: bool,
    run: options.ModelRun,
) -> None:
    """Interpolate spherically between latents x_T and decode with DDIM (eta = 0), or with
    --solver edict or bdia (images are then encoded exactly, and both halves of their
    latents are slerped with the same weights)."""
    from ddim import workflows
    from ddim.formats import images
    from ddim.noise import seeded_latents

    if bool(seeds) == bool(image_pairs):
        raise click.UsageError("give either --seeds A B or --images A.png B.png")
    pairs = seeds or image_pairs
    if len(pairs) != (2 if grid else 1):
        option = "--seeds" if seeds else "--images"
        raise click.UsageError(
            f"{option} must be given twice with --grid (four corners)"
            if grid
            else f"{option} takes one pair; give two pairs only with --grid"
        )
    if gif is not None and grid:
        raise click.UsageError("--gif animates a line interpolation; drop --grid")
    common.check_output(out, (".png",), "--out", force)
    common.check_output(gif, (".gif",), "--gif", force)

    model, schedule = run.load([steps])
    shape = options.image_shape(model)
    ends = [item for pair in pairs for item in pair]
    n = frames * frames if grid else frames
    sampler = run.sampler(steps, **encoding.fields())
    total = options.progress_ticks(schedule, sampler, n, run.batch_size)
    if image_pairs:
        total += options.progress_ticks(schedule, sampler, len(ends), run.batch_size)
    with common.progress(total, "interpolating") as tick:
        if seeds:
            corners, _ = seeded_latents(ends, shape, device=run.device)
        else:
            x0, _ = images.read_images(ends, shape[0], shape[1])
            corners = workflows.encode(
                model, schedule, x0.to(run.device), options=sampler, batch_size=run.batch_size,
                callback=tick,
            )  # fmt: skip
        latents = workflows.interpolation_latents(corners, frames)
        x = workflows.decode(
            model, schedule, latents, options=sampler, batch_size=run.batch_size, callback=tick
        )
    images.save_png(out, x, nrow=frames)
    click.echo(f"wrote {'a grid' if grid else 'a strip'} of {n} images to {out}")
    if gif is not None:
        images.save_gif(gif, [x[i : i + 1] for i in range(n)])
        click.echo(f"wrote {n} frames to {gif}")
