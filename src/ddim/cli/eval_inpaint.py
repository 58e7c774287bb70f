"""``ddim eval inpaint``: how often inpainted held-out digits keep their label, per method,
against its cost in model calls and the nearest-neighbour completion
(:mod:`ddim.eval.inpainting`)."""

from __future__ import annotations

from pathlib import Path

import click

from ddim.cli.eval_options import NumberList, Run, Slice, load_images, run_options
from ddim.cli.options import option
from ddim.names import NAMED_MASKS


@click.command("inpaint")
@run_options(n=1000)
@option("--data", required=True, metavar="PATH", help="MNIST images (t10k-images-idx3-ubyte.gz)")
@option("--labels", "labels_path", required=True, metavar="PATH", help="their labels (idx1)")
@option("--slice", "part", type=Slice(), default="9000:10000", help="the digits to inpaint")
@option("--train-slice", type=Slice(), default="0:9000", help="the nearest neighbour's pool")
@option("--mask", type=click.Choice(NAMED_MASKS), default="bottom-half", help="what to fill")
@option("--steps", type=click.IntRange(min=1), default=20, help="sampling steps S")
@option("--resamples", type=NumberList(int, 1), default="1,5,9",
        help="RePaint resamplings to score (1 is the replacement method)")  # fmt: skip
@option("--dps/--no-dps", default=False, help="also score DPS (a gradient pass a step)")
def inpaint_command(
    run: Run,
    data: str,
    labels_path: str,
    part: slice,
    train_slice: slice,
    mask: str,
    steps: int,
    resamples: list[int],
    dps: bool,
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
    from ddim.models.classifier import load_classifier

    model, sched, shape = run.prepare([steps])
    x = load_images(data, part, shape)[: run.n].to(run.device)
    labels = load_mnist_labels(labels_path)[part][: run.n]
    train = load_images(data, train_slice, shape).to(run.device)
    keep = named_mask(mask, shape[-1]).to(run.device)
    judge = load_classifier(device=run.device).predict
    methods = {
        ("replace" if r == 1 else f"repaint, r = {r}"): {
            "steps": steps, "spacing": run.spacing, "method": "replace" if r == 1 else "repaint",
            "resample": r, "precision": run.precision,
        }
        for r in resamples
    }  # fmt: skip
    if dps:
        methods["dps"] = {"steps": steps, "spacing": run.spacing, "method": "dps",
                          "precision": run.precision}  # fmt: skip
    scores, done = score_methods(model, sched, x, labels, keep, judge, methods, train=train,
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
