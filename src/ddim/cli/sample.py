"""``ddim sample``: draw images with the generalized DDIM sampler."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from ddim.cli import common, guide_options, options, run_options
from ddim.cli.options import choice_option, count_option

if TYPE_CHECKING:
    import torch

    from ddim.models.unet import UNet
    from ddim.sampling import Callback, SamplerOptions
    from ddim.schedule import NoiseSchedule
    from ddim.speed import Fastest


@click.command("sample", short_help="Sample images from a model.")
@options.ckpt_option
@options.sample_steps_option
@options.spacing_option
@options.solver_option
@options.final_step_option
@run_options.eta_option
@run_options.variance_option
@run_options.clip_option
@guide_options.class_option
@guide_options.guidance_option
@guide_options.classifier_scale_option
@guide_options.classifier_option
@count_option("-n", "--num", "n", default=64, help="number of images")
@options.batch_size_option
@options.seed_option
@options.device_option
@options.precision_option
@options.channels_last_option
@options.compile_option
@options.out_option(
    "samples.png",
    "PATH",
    "a .png grid, a .npz array (uint8 N,H,W,C) or a folder of PNGs (end it with /); a "
    "folder is filled by every torchrun process and resumed by a rerun",
)
@click.option(
    "--npz",
    default=None,
    metavar="PATH.npz",
    help="with a folder --out, also pack its images into one .npz (uint8 N,H,W,C)",
)
@count_option("--nrow", default=None, show_default="a square grid", help="images per grid row")
@click.option(
    "--trajectory",
    default=None,
    metavar="PATH.gif",
    help="also write the denoising sequence of the whole grid as an animated GIF",
)
@choice_option(
    "--trajectory-of",
    ["xt", "x0"],
    default="xt",
    help="animate the states x_t or the predictions of x0",
)
@options.force_option
def sample_command(
    ckpt: str,
    steps: int | None,
    spacing: str,
    solver: str,
    final_step: str | None,
    eta: float,
    variance: str,
    clip: bool | None,
    class_: str | None,
    guidance: float | None,
    classifier_scale: float | None,
    classifier: str | None,
    n: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    precision: str,
    channels_last: bool,
    compile: bool,
    out: str,
    npz: str | None,
    nrow: int | None,
    trajectory: str | None,
    trajectory_of: str,
    force: bool,
) -> None:
    """Sample images from a model (the bundled MNIST model by default).

    Under ``torchrun --nproc_per_node K`` with a folder --out, the processes share the
    images (image i always comes from seed + i), and a rerun with the same options skips
    the images already written.
    """
    from ddim import workflows
    from ddim.formats import images
    from ddim.sampling import SamplerOptions

    sampler = SamplerOptions(
        steps=steps or 50, spacing=spacing, eta=eta, variance=variance, clip_denoised=clip,
        precision=precision, solver=solver, final_step=final_step, guidance=guidance,
        classifier_scale=classifier_scale,
    )  # fmt: skip
    guide = Guide(class_, classifier)
    ckpt = guide_options.model_for(ckpt, class_, classifier_scale)
    if common.is_folder(out) and trajectory is None:
        fast = {"channels_last": channels_last, "compile": compile}
        _sample_to_folder(ckpt, n, batch_size, seed, device, (sampler, steps), guide, out, npz,
                          force, fast)  # fmt: skip
        return
    if npz is not None:
        raise click.UsageError("--npz needs a folder --out (ending with /) and no --trajectory")
    common.refuse_torchrun("ddim sample with a file --out or --trajectory")
    common.check_image_output(out, n, force)
    common.check_output(trajectory, (".gif",), "--trajectory", force)
    model, schedule = options.load_model(
        ckpt, device, [steps or 50], channels_last=channels_last, compile=compile,
        rows=min(n, batch_size),
    )  # fmt: skip
    sampler = options.with_own_plan(sampler, steps, model)
    labels, net, n, rows = guide.resolve(model, schedule, sampler, device, n)
    flags = (channels_last, compile)
    with _fastest(model, schedule, sampler, n, batch_size, device, flags) as (auto, tick):
        result = workflows.generate(
            auto.model,
            schedule,
            n,
            options.image_shape(model),
            seed=seed,
            batch_size=batch_size,
            device=device,
            options=sampler,
            labels=labels,
            classifier=net,
            return_trajectory=trajectory is not None,
            callback=tick,
        )
    x0 = result[0] if trajectory is not None else result
    _report(auto, schedule, sampler, n, batch_size)
    click.echo(f"wrote {common.write_images(out, x0, nrow or rows)}")
    if trajectory is not None:
        traj = result[1]
        frames = traj.xs if trajectory_of == "xt" else traj.x0_preds
        images.save_gif(trajectory, frames, nrow)
        click.echo(f"wrote {len(frames)} frames of {trajectory_of} to {trajectory}")


@dataclass(frozen=True)
class Guide:
    """``--class`` and ``--classifier``: which classes to draw, and the classifier that
    guides them under ``--classifier-scale``."""

    class_: str | None
    classifier: str | None

    def resolve(
        self,
        model: object,
        schedule: NoiseSchedule,
        sampler: SamplerOptions,
        device: torch.device,
        n: int,
    ) -> tuple[torch.Tensor | None, object, int, int | None]:
        """``(labels, classifier, n, images per grid row)`` for ``model``."""
        net = guide_options.load_guidance_classifier(
            self.classifier, sampler.classifier_scale, schedule, device
        )
        labels, n, per_row = guide_options.class_labels(model, self.class_, n, net)
        return labels, net, n, per_row


def _sample_to_folder(
    ckpt: str,
    n: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    given: tuple[SamplerOptions, int | None],
    guide: Guide,
    out: str,
    npz: str | None,
    force: bool,
    fast: dict[str, bool | None],
) -> None:
    """``ddim sample`` into a folder: this process's share, then (rank 0) the summary."""
    from ddim import distributed
    from ddim.workflows import sample_folder

    common.check_output(npz, (".npz",), "--npz", force)
    device = distributed.init_from_env(device)
    rank, world_size = distributed.world()
    sampler, steps = given
    model, schedule = options.load_model(ckpt, device, [sampler.steps], **fast,
                                         rows=min(n, batch_size))  # fmt: skip
    sampler = options.with_own_plan(sampler, steps, model)
    labels, net, n, _ = guide.resolve(model, schedule, sampler, device, n)
    mine = sum(b - a for a, b in sample_folder.rank_batches(n, batch_size, rank, world_size))
    flags, shown = (fast["channels_last"], fast["compile"]), rank == 0
    with _fastest(model, schedule, sampler, mine, batch_size, device, flags, shown) as (auto, tick):
        written, kept = sample_folder.sample_to_folder(
            auto.model, schedule, n, options.image_shape(model), out, seed=seed,
            batch_size=batch_size, device=device, options=sampler, labels=labels,
            classifier=net, overwrite=force, callback=tick,
        )  # fmt: skip
    if rank != 0:
        return
    _report(auto, schedule, sampler, n, batch_size)
    note = f" (kept {kept} already there)" if kept else ""
    click.echo(f"wrote {written} PNGs in {out}{note} with {world_size} process(es)")
    if npz is not None:
        sample_folder.pack_npz(out, n, npz)
        click.echo(f"wrote {n} images to {npz}")


@contextlib.contextmanager
def _fastest(
    model: UNet,
    schedule: NoiseSchedule,
    sampler: SamplerOptions,
    n: int,
    batch_size: int,
    device: torch.device,
    flags: tuple[bool | None, bool | None],
    shown: bool = True,
) -> Iterator[tuple[Fastest, Callback]]:
    """``model`` prepared for sampling ``n`` images (:func:`ddim.cli.options.auto_speed`: the
    fastest measured way unless the speed ``flags`` were given) and the tick of a progress bar
    over their steps; the seconds the block takes are learned for the next choice."""
    auto = options.auto_speed(model, schedule, sampler, n, batch_size, device, flags)
    total = options.progress_ticks(schedule, sampler, n, batch_size)
    start = time.perf_counter()
    with common.progress(total, "sampling", shown=shown) as tick:
        yield auto, tick
    auto.learn(time.perf_counter() - start)


def _report(
    auto: Fastest, schedule: NoiseSchedule, sampler: SamplerOptions, n: int, batch_size: int
) -> None:
    """Say what compiling cost, the model calls of ``n`` images and the speed picked."""
    options.report_compilation(auto.model)
    options.report_calls(schedule, sampler, n, batch_size)
    options.report_speed(auto)
