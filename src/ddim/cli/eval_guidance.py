"""``ddim eval guidance``: class accuracy against FD for classifier-free guidance weights
and classifier-guidance scales (:mod:`ddim.eval.guidance`)."""

from __future__ import annotations

import click

from ddim.cli import guide_options
from ddim.cli.eval_options import (
    Judging,
    NumberList,
    Run,
    judge_options,
    reference_options,
    reference_stats,
    run_options,
)  # fmt: skip
from ddim.cli.options import option
from ddim.cli.run_options import run_option


@click.command("guidance")
@run_options(n=1000)
@run_option("steps", default=20)
@option("--weights", type=NumberList(float, 0.0), default="0,1,2,3,5",
        help="classifier-free guidance weights w (needs a conditional --ckpt)")  # fmt: skip
@option("--scales", type=NumberList(float, 0.0), default=None,
        help="classifier-guidance scales s, with the noise-aware --classifier")  # fmt: skip
@guide_options.classifier_option
@option("--unconditional/--no-unconditional", default=True,
        help="also score n unconditional samples (the null label)")  # fmt: skip
@reference_options
@judge_options
def guidance_command(
    run: Run,
    steps: int,
    weights: list[float] | None,
    scales: list[float] | None,
    classifier: str | None,
    unconditional: bool,
    features: str,
    ref_data: str | None,
    ref_slice: slice,
    ref_stats: str | None,
    judging: Judging,
) -> None:
    """The guidance trade-off: for each strength, the share of a class-balanced set of -n
    samples that the bundled MNIST classifier assigns the requested class, and the set's FD
    against the reference (Ho & Salimans' Figure 1). Writes guidance.{md,json,png} (and,
    with --judges, guidance-judges.{md,json}: each set scored by those judges)."""
    from ddim.eval import metrics
    from ddim.eval.experiments import sample_stats
    from ddim.eval.guidance import guidance_curve, write_report
    from ddim.guidance import num_classes
    from ddim.models.classifier import load_classifier
    from ddim.models.noisy_classifier import load_noisy_classifier

    if (ref_data is None) == (ref_stats is None):
        raise click.UsageError("give one of --ref-data and --ref-stats")
    model, sched, shape = run.prepare([steps])
    conditional = num_classes(model) > 0
    feature_fn = metrics.feature_extractor(features, run.device)
    ref = reference_stats(feature_fn, features, ref_data, ref_slice, ref_stats, shape, run)
    judge = load_classifier(device=run.device).predict
    panel = judging.panel(ref_data, ref_slice, shape, run.device)
    common = {
        "shape": shape, "n": run.n, "feature_fn": feature_fn, "reference": ref,
        "labeller": judge, "options": run.sampler(steps), "seed": run.seed,
        "batch_size": run.batch_size, "device": run.device, "tap": panel and panel.tap,
    }  # fmt: skip
    points = []
    if conditional and weights:
        points += guidance_curve(model, sched, kind="cfg", strengths=weights, **common)
    if scales:
        net = load_noisy_classifier(classifier, run.device, sched)
        points += guidance_curve(
            model, sched, kind="classifier", strengths=scales, classifier=net, **common
        )
    if not points:
        raise click.UsageError(
            "nothing to score: --weights needs a class-conditional --ckpt; give --scales"
        )
    uncond = None
    if unconditional:
        fn = feature_fn if panel is None else panel.tap("null-label", feature_fn)
        uncond = sample_stats(
            model, sched, fn, shape=shape, n=run.n, batch_size=run.batch_size,
            seed=run.seed, options=run.sampler(steps), device=run.device,
        ).frechet_distance(ref)  # fmt: skip
    meta = {
        "title": f"Guidance trade-off of {run.ckpt}: S = {steps}, n = {run.n} ({features} FD)",
        "ckpt": run.ckpt, "steps": steps, "n": run.n, "seed": run.seed, "features": features,
        "spacing": run.spacing, "precision": run.precision, "classifier": classifier,
    }  # fmt: skip
    table = write_report(points, uncond, run.out_dir, meta)
    click.echo(table + f"wrote {run.out_dir}/guidance.{{md,json,png}}")
    if panel is not None:
        click.echo(panel.write(run.out_dir, "guidance", judging.keep)
                   + f"wrote {run.out_dir}/guidance-judges.{{md,json}}")  # fmt: skip
