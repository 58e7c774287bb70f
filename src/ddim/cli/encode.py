"""``ddim encode`` and ``ddim reconstruct``: deterministic DDIM inversion of images."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from ddim.cli import common, guide_options, options, run_options
from ddim.cli.options import count_option, out_option, steps_option

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from ddim.models.unet import UNet
    from ddim.plan import Step
    from ddim.schedule import NoiseSchedule


@dataclass(frozen=True)
class Encoding:
    """``--solver``, ``--edict-p``, ``--bdia-gamma``, ``--fixed-point``: how images are
    encoded and decoded, DDIM's way (optionally refined by fixed-point iteration) or exactly
    (EDICT, BDIA)."""

    solver: str
    edict_p: float
    bdia_gamma: float
    fixed_point: int

    def fields(self) -> dict[str, object]:
        """The :class:`~ddim.sampler_options.SamplerOptions` fields these set."""
        return dataclasses.asdict(self)

    def noting(self, tick: Callable[[Step], None]) -> tuple[Callable[[Step], None], list[float]]:
        """``tick`` that also keeps each fixed-point step's residual, and that list."""
        residuals: list[float] = []

        def noted(step: Step) -> None:
            tick(step)
            if step.residual is not None:
                residuals.append(step.residual)

        return noted, residuals

    def fixed_point_line(self, residuals: list[float], steps: int) -> str | None:
        """What the fixed-point iteration cost and how far it got, or None without it."""
        if not self.fixed_point:
            return None
        calls = steps * (1 + self.fixed_point)
        return (
            f"fixed point: {self.fixed_point} extra model calls a step ({calls} a batch in "
            f"all); largest residual {max(residuals):.3g}"
        )


#: ``--solver --edict-p --bdia-gamma --fixed-point``, handed to a command as
#: ``encoding: Encoding``.
encoding_options = options.options_as(
    Encoding,
    [run_options.encoding_solver_option, run_options.edict_p_option,
     run_options.bdia_gamma_option, run_options.fixed_point_option],
    name="encoding",
)  # fmt: skip

images_argument = click.argument(
    "sources", metavar="IMAGES...", nargs=-1, required=True, type=click.Path(exists=True)
)


def load_inputs(
    run: options.ModelRun,
    steps: int,
    sources: tuple[str, ...],
    class_: str | None,
    conditional: str | None = None,
) -> tuple[UNet, NoiseSchedule, torch.Tensor, list[str], torch.Tensor | None]:
    """The model (``--class``, or ``conditional`` for a command that needs classes, picks
    the bundled conditional one by default), its schedule, the images (which must have the
    model's size: they are not resized), their names, and the class of ``--class`` for
    each (``None`` without it)."""
    from ddim.formats import images

    if class_ == "all":
        raise click.BadParameter("this command takes one class K, not all", param_hint="'--class'")
    run = dataclasses.replace(run, ckpt=guide_options.model_for(run.ckpt, class_ or conditional))
    model, schedule = run.load([steps])
    channels, size, _ = options.image_shape(model)
    x0, names = images.read_images(sources, channels, size)
    classes = guide_options.class_labels(model, class_, len(x0))[0]
    return model, schedule, x0.to(run.device), names, classes


@click.command("encode", short_help="Encode images to latents x_T (DDIM inversion).")
@images_argument
@out_option(
    "latents.npz", "PATH", "latents file: .npz (arrays latents, sources; with an exact solver "
    "also latents_second, solver) or .pt"
)  # fmt: skip
@steps_option
@encoding_options
@guide_options.class_guidance
@options.model_options
@options.force_option
def encode_command(
    sources: tuple[str, ...],
    out: str,
    steps: int,
    encoding: Encoding,
    guide: guide_options.ClassChoice,
    force: bool,
    run: options.ModelRun,
) -> None:
    """Encode images to their latents x_T by deterministic DDIM inversion, or exactly with
    --solver edict or bdia (their latent is two tensors: the sampler's whole state).

    IMAGES are image files, .npz arrays or folders of them; they must have the model's
    size and channels.
    """
    from ddim import workflows
    from ddim.formats.latents import SUFFIXES, save_latents

    common.check_output(out, SUFFIXES, "--out", force)
    model, schedule, x0, names, classes = load_inputs(run, steps, sources, guide.class_)
    sampler = run.sampler(steps, guidance=guide.guidance, **encoding.fields())
    total = options.progress_ticks(schedule, sampler, len(x0), run.batch_size)
    with common.progress(total, "encoding") as tick:
        noted, residuals = encoding.noting(tick)
        latents = workflows.encode(
            model, schedule, x0, options=sampler, labels=classes, batch_size=run.batch_size,
            callback=noted,
        )  # fmt: skip
    save_latents(out, latents, names)
    if line := encoding.fixed_point_line(residuals, steps):
        click.echo(line)
    click.echo(f"wrote {len(names)} latents to {out}")


@click.command("reconstruct", short_help="Encode and decode images; print the MSE.")
@images_argument
@out_option(
    "reconstruction.png", "PATH.png", "rows of originals above rows of their reconstructions"
)
@count_option("--ncols", default=8, help="images per row of the picture")
@click.option("--per-image", is_flag=True, help="also print the error of every image")
@steps_option
@encoding_options
@guide_options.class_guidance
@options.model_options
@options.force_option
def reconstruct_command(
    sources: tuple[str, ...],
    out: str,
    ncols: int,
    per_image: bool,
    steps: int,
    encoding: Encoding,
    guide: guide_options.ClassChoice,
    force: bool,
    run: options.ModelRun,
) -> None:
    """Encode images and decode them again with the same steps (paper Section 5.4).

    Prints the per-dimension mean squared error between each image and its reconstruction,
    with pixels scaled to [0, 1] as in the paper, both unclamped (the paper's figure) and
    clamped to [-1, 1] as every saved image is. --solver edict or bdia encode exactly.
    """
    from ddim import workflows
    from ddim.formats import images

    common.check_output(out, (".png",), "--out", force)
    model, schedule, x0, names, classes = load_inputs(run, steps, sources, guide.class_)
    sampler = run.sampler(steps, guidance=guide.guidance, **encoding.fields())
    total = 2 * options.progress_ticks(schedule, sampler, len(x0), run.batch_size)
    with common.progress(total, "reconstructing") as tick:
        noted, residuals = encoding.noting(tick)
        result = workflows.reconstruct(
            model, schedule, x0, options=sampler, labels=classes, batch_size=run.batch_size,
            callback=noted,
        )  # fmt: skip
    if line := encoding.fixed_point_line(residuals, steps):
        click.echo(line)
    cols = min(ncols, len(x0))
    images.save_png(out, images.stack_rows(x0, result.images, cols), nrow=cols)
    if per_image:
        for name, mse in zip(names, result.mse.tolist(), strict=True):
            click.echo(f"{mse:.6f}  {name}")
    from ddim.workflows import per_dim_mse

    clamped = per_dim_mse(x0.to(result.images.device), result.images.clamp(-1, 1)).mean()
    click.echo(
        f"per-dim MSE on [0,1]-scaled pixels: {result.mse.mean().item():.6g} "
        f"(mean over {len(names)} images, {steps} steps, {encoding.solver}); clamped to "
        f"[-1, 1] as saved: {clamped.item():.6g}"
    )
    click.echo(f"wrote originals and reconstructions to {out}")
