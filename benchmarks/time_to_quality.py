"""Time to quality: the model calls and wall time that DDIM, DPM-Solver++(2M), distilled
students and diffusers' ``DDIMPipeline`` (on the same teacher weights, converted with our
converter) need to reach a given FD-MNIST, measured side by side in one run.

Every setting draws ``-n`` images in batches, and the settings take turns batch by batch,
so a change in the machine's speed during the run falls on all of them alike. Each
setting's images are scored with FD-MNIST against held-out digits 9000-9999 and written
to ``--out`` as ``.npz`` (judge them with more judges: ``ddim eval judge``). Every setting,
the pipeline included, starts image ``i`` from the first draw of a generator seeded ``i``,
so any two are compared paired (``ddim.eval.paired``). Then, for DDIM-50 and DDIM-10 as
targets, the table gives every family's cheapest setting that reaches the target, one
whose FD-MNIST is not above the target's beyond the 95 % interval of their paired
difference: its model calls and its seconds per 1,000 images.

    python benchmarks/time_to_quality.py --ref-data ../shared/data/mnist/t10k-images-idx3-ubyte.gz \
        --student STUDENT.safetensors [--student ...] [-n 1000] [--threads 2] [--out runs/ttq] \
        [--only DDIM-10 --only DDIM-50 --only 2M-10-uniform ...]

``--only`` keeps the named settings of the teacher (the two targets, DDIM-10 and DDIM-50,
always) and every student: a shorter run that re-measures new students beside the
settings they are compared with.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import ddim
from ddim.eval import metrics, paired
from ddim.eval.judges import Interval
from ddim.formats.archives import load_mnist
from ddim.formats.diffusers import import_diffusers, to_diffusers_unet
from ddim.formats.diffusers_folder import scheduler_config
from ddim.formats.images import save_npz
from ddim.noise import seeded_latents
from ddim.sampling import own_plan
from ddim.speed.choice import cpu_name

Run = Callable[[int, int], torch.Tensor]


@dataclass
class Setting:
    """One way to sample: its family, label, model calls per image and ``run(n, first)``,
    which returns ``n`` images in ``[-1, 1]`` from latents ``first..first+n-1``."""

    family: str
    label: str
    calls: int
    run: Run
    seconds: float = 0.0
    images: list[torch.Tensor] = field(default_factory=list)


def ours(model: torch.nn.Module, sched: ddim.NoiseSchedule, **options: object) -> Run:
    """``ddim.sample`` with ``options`` on the seeded latents, in float32."""

    def run(n: int, first: int) -> torch.Tensor:
        x_T, _ = seeded_latents(range(first, first + n), (1, 28, 28))
        return ddim.sample(model, x_T, sched, precision="fp32", **options)

    return run


def pipeline(model: torch.nn.Module, sched: ddim.NoiseSchedule, steps: int) -> Run:
    """diffusers' ``DDIMPipeline`` at ``steps``, eta = 0, its other defaults; a generator
    per image, seeded as ours, so its ``x_T`` are our seeded latents."""
    diffusers = import_diffusers()
    scheduler = diffusers.DDIMScheduler(**scheduler_config(sched))
    pipe = diffusers.DDIMPipeline(unet=to_diffusers_unet(model), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def run(n: int, first: int) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(i) for i in range(first, first + n)]
        out = pipe(batch_size=n, generator=generators, eta=0.0, num_inference_steps=steps,
                   output_type="np")  # fmt: skip
        return torch.from_numpy(out.images).permute(0, 3, 1, 2) * 2 - 1

    return run


def settings(students: list[str], with_pipeline: bool) -> list[Setting]:
    """DDIM at 10, 20, 50, 100 steps; 2M at 5, 10, 20 on the logSNR spacing (the README's
    example) and at 10, 20 on the uniform one; each student at its own plan; the pipeline at
    10, 20, 50 steps."""
    teacher, sched = ddim.load_pretrained("mnist")
    teacher.eval()
    out = [Setting("DDIM", f"DDIM-{s}", ddim.model_calls(sched, s), ours(teacher, sched, steps=s))
           for s in (10, 20, 50, 100)]  # fmt: skip
    out += [
        Setting("DPM-Solver++(2M)", f"2M-{s}",
                ddim.model_calls(sched, s, spacing="logsnr", solver="dpmpp-2m"),
                ours(teacher, sched, steps=s, spacing="logsnr", solver="dpmpp-2m"))
        for s in (5, 10, 20)
    ]  # fmt: skip
    out += [
        Setting("DPM-Solver++(2M)", f"2M-{s}-uniform",
                ddim.model_calls(sched, s, spacing="uniform", solver="dpmpp-2m"),
                ours(teacher, sched, steps=s, spacing="uniform", solver="dpmpp-2m"))
        for s in (10, 20)
    ]  # fmt: skip
    for path in students:
        student, student_sched = ddim.load_pretrained(path)
        student.eval()
        plan = own_plan(student)
        if plan is None:
            raise SystemExit(f"{path} records no sampling plan: it is not a distilled student")
        calls = ddim.model_calls(student_sched, plan)
        label = f"student-{calls}"
        if any(s.label == label for s in out):  # a second student of as many calls
            label = f"{label}-{sum(s.family == 'student' for s in out) + 1}"
        out.append(Setting("student", label, calls, ours(student, student_sched)))
    if with_pipeline:
        out += [Setting("DDIMPipeline", f"DDIMPipeline-{s}", s, pipeline(teacher, sched, s))
                for s in (10, 20, 50)]  # fmt: skip
    return out


def sample_side_by_side(runs: list[Setting], n: int, batch: int) -> None:
    """Every setting's ``n`` images, the settings taking turns batch by batch; each one's
    wall time summed over its batches (after one untimed warm-up batch of 2 images)."""
    for s in runs:
        s.run(2, n)
    for first in range(0, n, batch):
        size = min(batch, n - first)
        for s in runs:
            start = time.perf_counter()
            s.images.append(s.run(size, first))
            s.seconds += time.perf_counter() - start


def cheapest(runs: list[Setting], difference: dict[str, Interval]) -> dict[str, Setting]:
    """Each family's fewest-call setting whose paired FD difference to the target has an
    interval that reaches down to zero or below."""
    best: dict[str, Setting] = {}
    for s in runs:
        reached = difference[s.label].low <= 0
        if reached and (s.family not in best or s.calls < best[s.family].calls):
            best[s.family] = s
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-data", required=True, help="MNIST t10k-images-idx3-ubyte.gz")
    parser.add_argument("--student", action="append", default=[], help="a distilled student")
    parser.add_argument("-n", type=int, default=1000, help="images per setting")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-pipeline", action="store_true", help="leave diffusers out")
    parser.add_argument("--only", action="append", default=[],
                        help="keep this setting of the teacher (repeat; DDIM-10 and DDIM-50 "
                             "always stay); the students always run")  # fmt: skip
    parser.add_argument("--out", default="runs/time-to-quality", help="folder for the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()} ({platform.machine()}), {args.threads} threads, torch "
          f"{torch.__version__}; n = {args.n}, batches of {args.batch_size}, fp32")  # fmt: skip
    runs = settings(args.student, not args.no_pipeline)
    if args.only:
        known = {s.label for s in runs}
        unknown = sorted(set(args.only) - known)
        if unknown:
            parser.error(f"--only {unknown[0]}: no such setting (one of {', '.join(known)})")
        keep = {*args.only, "DDIM-10", "DDIM-50"}
        runs = [s for s in runs if s.label in keep or s.family == "student"]
    with torch.no_grad():
        sample_side_by_side(runs, args.n, args.batch_size)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extract = metrics.feature_extractor("mnist")
    reference = {"mnist": extract(load_mnist(args.ref_data)[9000:10000]).numpy()}
    features, fd = {}, {}
    for s in runs:
        images = torch.cat(s.images)
        save_npz(out / f"{s.label}.npz", images)
        features[s.label] = {"mnist": extract(images).numpy()}
        fd[s.label] = paired.values(features[s.label], reference, ["fd-mnist"], {})["fd-mnist"]
    to = {target: {s.label: paired.compare(features[target], features[s.label], reference,
                                           ["fd-mnist"])["fd-mnist"] for s in runs}
          for target in ("DDIM-50", "DDIM-10")}  # fmt: skip

    per_1000 = {s.label: 1000 * s.seconds / args.n for s in runs}
    lines = ["| setting | model calls | s per 1,000 images | FD-MNIST | paired − DDIM-50 | "
             "paired − DDIM-10 |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {s.label} | {s.calls} | {per_1000[s.label]:.1f} | {fd[s.label]:.2f} | "
              f"{to['DDIM-50'][s.label]} | {to['DDIM-10'][s.label]} |" for s in runs]  # fmt: skip
    for target, difference in to.items():
        best = cheapest(runs, difference)
        lines += ["", f"To reach {target}'s FD-MNIST ({fd[target]:.2f}):", "",
                  "| family | cheapest setting | model calls | s per 1,000 images |",
                  "|---|---|---:|---:|"]  # fmt: skip
        for family in dict.fromkeys(s.family for s in runs):
            s = best.get(family)
            lines.append(f"| {family} | {s.label} | {s.calls} | {per_1000[s.label]:.1f} |"
                         if s else f"| {family} | not reached | | |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    (out / "time-to-quality.md").write_text(table + "\n")
    rows = [{"label": s.label, "family": s.family, "calls": s.calls, "seconds": s.seconds,
             "fd_mnist": fd[s.label], **{f"minus_{t}": asdict(d[s.label]) for t, d in to.items()}}
            for s in runs]  # fmt: skip
    record = {"machine": cpu_name(), "threads": args.threads, "n": args.n, "settings": rows}
    (out / "time-to-quality.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
