"""``ddim edit``, ``ddim inpaint`` and ``ddim translate``: edit given images with a model
(SDEdit, inpainting, class translation through the DDIM latent; :mod:`ddim.edit`,
:mod:`ddim.inpaint`)."""

from __future__ import annotations

import click

from ddim.cli import common, guide_options, options, run_options
from ddim.cli.encode import Encoding, encoding_options, load_inputs
from ddim.cli.options import choice_option, count_option, option, out_option, steps_option
from ddim.names import (
    INPAINT_JUMP_LENGTH,
    INPAINT_METHOD,
    INPAINT_METHODS,
    INPAINT_RESAMPLE,
    INPAINT_RESAMPLE_BELOW,
    INPAINT_STEPS,
    NAMED_MASKS,
)

images_argument = click.argument(
    "sources", metavar="IMAGES...", nargs=-1, required=True, type=click.Path(exists=True)
)


@click.command("edit", short_help="SDEdit: noise images part of the way, then denoise.")
@images_argument
@option("--strength", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.6,
        help="how far to noise, t0 = strength x T: 1 ignores the images")  # fmt: skip
@out_option("edited.png", "PATH", "a .png grid, a .npz or a folder/ of the edited images")
@steps_option
@options.solver_option
@run_options.eta_option
@guide_options.class_guidance
@options.seed_option
@options.model_options
@options.force_option
def edit_command(
    sources: tuple[str, ...],
    strength: float,
    out: str,
    steps: int,
    solver: str,
    eta: float,
    guide: guide_options.ClassChoice,
    seed: int,
    force: bool,
    run: options.ModelRun,
) -> None:
    """SDEdit (Meng et al. 2022): noise IMAGES to t0 = strength x T with the forward process,
    then sample down from t0 (about strength x steps model calls); with --class, toward a
    class. Image i's noise comes from seed + i."""
    from ddim.edit import edit

    common.check_image_output(out, 1, force)
    model, schedule, x0, _, labels = load_inputs(run, steps, sources, guide.class_)
    sampler = run.sampler(steps, solver=solver, eta=eta, guidance=guide.guidance)
    x = edit(model, x0, schedule, strength=strength, options=sampler, y=labels, seed=seed)
    click.echo(f"wrote {common.write_images(out, x)}")


@click.command("inpaint", short_help="Fill the masked region of images.")
@images_argument
@option(
    "--mask",
    required=True,
    metavar="PNG|NAME",
    help=f"a PNG (white keeps, black fills) or the region to fill: {', '.join(NAMED_MASKS)}",
)
@out_option("inpainted.png", "PATH", "a .png grid, a .npz or a folder/ of the completed images")
@choice_option(
    "--method", INPAINT_METHODS, default=INPAINT_METHOD, help="how the known pixels steer"
)
@count_option("--resample", default=INPAINT_RESAMPLE, help="resamplings per level (repaint, ddnm)")
@count_option(
    "--jump-length", default=INPAINT_JUMP_LENGTH, help="how far a resampling goes back up, in steps"
)
@option(
    "--resample-below",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=INPAINT_RESAMPLE_BELOW,
    help="resample only at timesteps t < this x T (1: everywhere, as RePaint)",
)
@run_options.run_option(
    "eta", default=None, shown="1 for ddim (RePaint's ancestral step); the other solvers take none"
)
@run_options.run_option("steps", default=INPAINT_STEPS)
@options.solver_option
@guide_options.class_guidance
@options.seed_option
@options.model_options
@options.force_option
def inpaint_command(
    sources: tuple[str, ...],
    mask: str,
    out: str,
    method: str,
    resample: int,
    jump_length: int,
    resample_below: float,
    eta: float | None,
    steps: int,
    solver: str,
    guide: guide_options.ClassChoice,
    seed: int,
    force: bool,
    run: options.ModelRun,
) -> None:
    """Inpaint IMAGES where --mask is black (or in the named region); known pixels come out
    unchanged. Prints the model calls and gradient passes each batch cost."""
    from ddim.formats.masks import read_mask
    from ddim.inpaint import inpaint

    common.check_image_output(out, 1, force)
    model, schedule, x0, _, labels = load_inputs(run, steps, sources, guide.class_)
    keep = read_mask(mask, x0.shape[-1]).to(x0.device)
    if eta is None:
        eta = 1.0 if solver == "ddim" else 0.0
    sampler = run.sampler(steps, solver=solver, eta=eta, guidance=guide.guidance)
    result = inpaint(
        model, x0, keep, schedule, options=sampler, method=method, jump_length=jump_length,
        resample=resample, resample_below=resample_below, y=labels, seed=seed,
    )  # fmt: skip
    click.echo(f"{method}: {result.model_calls} model calls, {result.grad_passes} gradient passes")
    click.echo(f"wrote {common.write_images(out, result.images)}")


@click.command("translate", short_help="Translate images from one class to another (DDIB).")
@images_argument
@option("--from", "source", type=click.IntRange(min=0), required=True, help="their class")
@option("--to", "target", type=click.IntRange(min=0), required=True, help="the new class")
@out_option("translated.png", "PATH", "a .png grid, a .npz or a folder/ of the translations")
@steps_option
@encoding_options
@guide_options.guidance_option
@options.model_options
@options.force_option
def translate_command(
    sources: tuple[str, ...],
    source: int,
    target: int,
    out: str,
    steps: int,
    encoding: Encoding,
    guidance: float | None,
    force: bool,
    run: options.ModelRun,
) -> None:
    """DDIB (Su et al. 2023): encode IMAGES under class --from with the deterministic DDIM
    inversion, decode under class --to (the bundled mnist-cond unless --ckpt is given)."""
    from ddim.edit import translate

    common.check_image_output(out, 1, force)
    from ddim.guidance import num_classes

    model, schedule, x0, _, _ = load_inputs(run, steps, sources, None, conditional="translate")
    k = num_classes(model)
    if not k:
        raise click.UsageError("translation needs a class-conditional model (--ckpt)")
    for name, label in (("--from", source), ("--to", target)):
        if label >= k:
            raise click.BadParameter(f"{label} is not a class of this model: give 0..{k - 1}",
                                     param_hint=f"'{name}'")  # fmt: skip
    sampler = run.sampler(steps, guidance=guidance, **encoding.fields())
    x = translate(model, x0, schedule, source=source, target=target, options=sampler)
    click.echo(f"wrote {common.write_images(out, x)}")
