"""``ddim eval inpaint``: how often inpainted held-out digits keep their label, per method,
against its cost in model calls and the nearest-neighbour completion
(:mod:`ddim.eval.inpainting`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ddim.cli.eval_options import Run, Slice, load_images, run_options
from ddim.cli.options import option
from ddim.cli.run_options import run_option
from ddim.names import INPAINT_METHODS, NAMED_MASKS


class MethodList(click.ParamType):
    """Comma-separated ``METHOD[:RESAMPLE[:JUMP[:BELOW]]]``: ``(method, resample,
    jump_length, resample_below)`` each, resampling 1, jumps of 1 step and resampling at
    every t (BELOW = 1) unless given."""

    name = "method list"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse ``replace,ddnm:15:2:0.5`` into ``(method, resample, jump_length,
        resample_below)`` tuples, or fail with click's one-line usage error."""
        if isinstance(value, list):
            return value
        out = []
        for item in str(value).split(","):
            method, *numbers = item.strip().split(":")
            if method not in INPAINT_METHODS or len(numbers) > 3:
                self.fail(f"{item!r} is not METHOD[:RESAMPLE[:JUMP[:BELOW]]] with METHOD one of "
                          f"{', '.join(INPAINT_METHODS)}", param, ctx)  # fmt: skip
            if not all(n.isdigit() and int(n) >= 1 for n in numbers[:2]):
                self.fail(f"{item!r}: RESAMPLE and JUMP are whole numbers >= 1", param, ctx)
            below = _fraction(numbers[2]) if len(numbers) == 3 else 1.0
            if below is None:
                self.fail(f"{item!r}: BELOW is a number in (0, 1]", param, ctx)
            r, j = ([int(n) for n in numbers[:2]] + [1, 1])[:2]
            out.append((method, r, j, below))
        return out


def _fraction(text: str) -> float | None:
    """``text`` as a number in (0, 1], or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value <= 1 else None


@click.command("inpaint")
@run_options(n=1000)
@option("--data", required=True, metavar="PATH", help="MNIST images (t10k-images-idx3-ubyte.gz)")
@option("--labels", "labels_path", required=True, metavar="PATH", help="their labels (idx1)")
@option("--slice", "part", type=Slice(), default="9000:10000", help="the digits to inpaint")
@option("--train-slice", type=Slice(), default="0:9000", help="the nearest neighbour's pool")
@option("--mask", type=click.Choice(NAMED_MASKS), default="bottom-half", help="what to fill")
@run_option("steps", default=20)
@option("--methods", type=MethodList(), default="replace,repaint:5:1,ddnm:5:2,ddnm:15:2:0.5",
        help="the methods to score, each METHOD[:RESAMPLE[:JUMP[:BELOW]]], resampling only at "
        "t < BELOW x T (dps: a gradient pass a step)")  # fmt: skip
def inpaint_command(
    run: Run,
    data: str,
    labels_path: str,
    part: slice,
    train_slice: slice,
    mask: str,
    steps: int,
    methods: list[tuple[str, int, int, float]],
) -> None:
    """Erase --mask of -n held-out digits, inpaint them with each method, and report the
    share the bundled classifier labels as the original digit (inpaint.{md,json,png})."""
    import torch

    from ddim.eval.inpainting import markdown, score_methods
    from ddim.eval.reports import write_json
    from ddim.formats.archives import load_mnist_labels
    from ddim.formats.atomic import atomic_write_text
    from ddim.formats.images import save_png
    from ddim.formats.masks import named_mask
    from ddim.inpaint import walk_name
    from ddim.models.classifier import load_classifier

    model, sched, shape = run.prepare([steps])
    x = load_images(data, part, shape)[: run.n].to(run.device)
    labels = load_mnist_labels(labels_path)[part][: run.n]
    train = load_images(data, train_slice, shape).to(run.device)
    keep = named_mask(mask, shape[-1]).to(run.device)
    judge = load_classifier(device=run.device).predict
    walks = {
        method + walk_name(r, j, below): {
            "steps": steps, "spacing": run.spacing, "method": method, "resample": r,
            "jump_length": j, "resample_below": below, "precision": run.precision,
        }
        for method, r, j, below in methods
    }  # fmt: skip
    scores, done = score_methods(model, sched, x, labels, keep, judge, walks, train=train,
                                 batch_size=run.batch_size, seed=run.seed)  # fmt: skip
    clean = (judge(x).cpu() == labels).double().mean().item()
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = f"Inpainting the {mask} of {len(x)} digits of {data}[{part.start}:{part.stop}]"
    table = markdown(scores, clean)
    atomic_write_text(out / "inpaint.md", f"{title} ({run.ckpt}, S = {steps})\n\n{table}")
    write_json(out / "inpaint.json", {
        "meta": {"ckpt": run.ckpt, "n": len(x), "steps": steps, "mask": mask, "clean": clean,
                 "seed": run.seed, "spacing": run.spacing, "precision": run.precision},
        "scores": [s.__dict__ for s in scores],
    })  # fmt: skip
    rows = [x[:8], torch.where(keep.bool(), x[:8], torch.zeros_like(x[:8]))]
    save_png(out / "inpaint.png", torch.cat(rows + [c[:8] for c in done.values()]), nrow=8)
    click.echo(table + f"wrote {out}/inpaint.{{md,json,png}}")
