"""``ddim eval landing``: where a distilled student's steps land against its teacher's two
(:mod:`ddim.eval.landing`), on held-out images; a check of a round in a minute, before its
samples are judged."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ddim.cli import options
from ddim.cli.eval_options import Slice, load_images
from ddim.cli.options import option

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from ddim.schedule import NoiseSchedule


@click.command("landing")
@click.argument("student", metavar="STUDENT")
@option(
    "--teacher",
    required=True,
    metavar="CKPT",
    help="the round's teacher: a checkpoint or a bundled name",
)
@option("--data", required=True, metavar="PATH", help="held-out images: MNIST idx3, .npz or folder")
@option("--slice", "part", type=Slice(), default=":", help="which images of --data, START:STOP")
@option("--seed", type=click.IntRange(min=0), default=0, help="seed of the noise")
@option("--weights", type=click.Choice(("ema", "model")), default="ema",
        help="the student's weights (a round's checkpoint also holds the raw ones)")  # fmt: skip
@option("--swap-samples", type=click.IntRange(min=0), default=0, metavar="N",
        help="also write N samples (seeds from --seed) of the student and, for each of its "
             "steps, with that step taken by the teacher's two, to judge what each step "
             "costs")  # fmt: skip
@options.device_option
@option("--out-dir", type=click.Path(file_okay=False), default="results", help="output folder")
def landing_command(
    student: str,
    teacher: str,
    data: str,
    part: slice,
    seed: int,
    weights: str,
    swap_samples: int,
    device: torch.device,
    out_dir: str,
) -> None:
    """For each point t of STUDENT's plan: the RMS distance from its one DDIM step to the
    teacher's two, beside the teacher's own single step over the same interval (what a
    student that learnt nothing gives). The teacher's plan is its recorded one (a student)
    or twice as many trailing steps. Writes landing.md and landing.json.

    With --swap-samples N, also writes student.npz (N samples from the seeds --seed on, as
    `ddim sample --seed` draws them) and swap-T.npz for each student point T: the same
    seeds with that step taken by the teacher's two. `ddim eval judge ... --baseline
    student.npz` then gives what each step costs."""
    import torch

    from ddim.eval.landing import landing_errors
    from ddim.eval.reports import write_json
    from ddim.formats.atomic import atomic_write_text
    from ddim.formats.checkpoint import load_checkpoint

    s_ckpt, t_ckpt = load_checkpoint(student), load_checkpoint(teacher)
    s_plan = s_ckpt.model_config.sampling_plan
    if s_plan is None:
        raise ValueError(f"{student} records no sampling plan: it is not a distilled student")
    t_plan = t_ckpt.model_config.sampling_plan or tuple(
        t_ckpt.schedule.timesteps(2 * len(s_plan), "trailing").tolist()
    )
    if tuple(t_plan[::2]) != tuple(s_plan) or len(t_plan) != 2 * len(s_plan):
        raise ValueError(
            f"{student}'s plan {list(s_plan)} is not every other point of {teacher}'s "
            f"{list(t_plan)}"
        )
    if s_ckpt.data_shape != t_ckpt.data_shape:
        raise ValueError(f"{student} and {teacher} take images of different shapes")
    x0 = load_images(data, part, s_ckpt.data_shape).to(device)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    predictions = (t_ckpt.model_config.prediction, s_ckpt.model_config.prediction)
    student_net, teacher_net = s_ckpt.unet(weights).to(device), t_ckpt.unet().to(device)
    rows = landing_errors(student_net, teacher_net, t_ckpt.schedule, x0, noise, t_plan,
                          predictions)  # fmt: skip
    lines = ["| t -> t'' | student | teacher, one step | ratio |", "|---|---:|---:|---:|"]
    for r in rows:
        ratio = r.student / r.teacher_one_step
        lines.append(f"| {r.t} -> {r.t_end} | {r.student:.3e} | {r.teacher_one_step:.3e} "
                     f"| {ratio:.2f} |")  # fmt: skip
        click.echo(lines[-1])
    meta = {"student": student, "teacher": teacher, "data": f"{data}[{part.start}:{part.stop}]",
            "n": int(x0.shape[0]), "seed": seed, "weights": weights,
            "teacher_plan": list(t_plan)}  # fmt: skip
    out = Path(out_dir)
    write_json(out / "landing.json", {"meta": meta, "rows": [r.to_dict() for r in rows]})
    title = (f"# Where {student}'s steps land against {teacher}'s two "
             f"({meta['n']} images of {meta['data']}; RMS of z'')")  # fmt: skip
    atomic_write_text(out / "landing.md", title + "\n\n" + "\n".join(lines) + "\n")
    click.echo(f"wrote {out}/landing.{{md,json}}")
    if swap_samples:
        _write_swaps(student_net, teacher_net, t_ckpt.schedule, t_plan, predictions,
                     (swap_samples, seed, s_ckpt.data_shape), out)  # fmt: skip


def _write_swaps(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    sched: NoiseSchedule,
    t_plan: Sequence[int],
    predictions: tuple[str, str],
    draw: tuple[int, int, tuple[int, ...]],
    out: Path,
) -> None:
    """student.npz and one swap-T.npz a student point (:func:`ddim.eval.landing.swapped_sample`),
    in batches of 250 from seeded latents."""
    import torch

    from ddim.eval.landing import swapped_sample
    from ddim.formats.images import save_npz
    from ddim.noise import seeded_latents

    n, seed, shape = draw
    device = next(student.parameters()).device
    for k in (None, *range(len(t_plan) // 2)):
        parts = []
        for start in range(seed, seed + n, 250):
            x_T, _ = seeded_latents(range(start, min(start + 250, seed + n)), shape, device=device)
            parts.append(swapped_sample(student, teacher, sched, x_T, t_plan, predictions, k))
        name = "student.npz" if k is None else f"swap-{t_plan[2 * k]}.npz"
        save_npz(out / name, torch.cat(parts))
        click.echo(f"wrote {out}/{name}")
