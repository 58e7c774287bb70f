"""``ddim eval judge``: score sets of samples with every judge, each with its interval, next
to the floor of real images (:mod:`ddim.eval.judges`)."""

from __future__ import annotations

from pathlib import Path

import click

from ddim.cli.eval_options import JudgeList, Slice, load_images
from ddim.cli.options import option


@click.command("judge")
@click.argument("samples", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False),
                metavar="SAMPLES.npz...")  # fmt: skip
@option("--ref-data", required=True, metavar="PATH",
        help="real images: an MNIST idx3 file (t10k-images-idx3-ubyte.gz) or an .npz")  # fmt: skip
@option("--ref-slice", type=Slice(), default="9000:10000", help="the reference images")
@option("--train-slice", type=Slice(), default="0:9000",
        help="the training images: the PCA basis and the floor's draws")  # fmt: skip
@option("--floor-draws", type=click.IntRange(min=0), default=5,
        help="random draws of real images to score as the floor (0: none)")  # fmt: skip
@option("--judges", type=JudgeList(), default="all", help="which judges, comma-separated")
@option("--baseline", type=click.Path(exists=True, dir_okay=False), default=None,
        metavar="BASE.npz", help="also print each set's difference from this set of the same "
        "seeds, with a paired bootstrap interval (bold: zero left out)")  # fmt: skip
@option("--out", default=None, metavar="PATH.md",
        help="also write the table, a .json and (--baseline) PATH-paired.md, .json")  # fmt: skip
def judge_command(
    samples: tuple[str, ...],
    ref_data: str,
    ref_slice: slice,
    train_slice: slice,
    floor_draws: int,
    judges: tuple[str, ...],
    baseline: str | None,
    out: str | None,
) -> None:
    """Score each SAMPLES.npz (uint8 images, as `ddim sample --out x.npz` or --keep of the
    other eval commands write) with FD in three feature spaces, KID, precision, recall and
    recognizability, each with a 95 % interval, and (first row) random draws of as many
    training images: the floor. Rows are named by file (by folder/file where names repeat)."""
    from ddim.eval.judges import as_json, markdown
    from ddim.eval.panel import Panel, from_pixels
    from ddim.formats.archives import load_npz
    from ddim.formats.atomic import atomic_write_text

    shape = (1, 28, 28)
    train = load_images(ref_data, train_slice, shape)
    panel = Panel.build(judges, load_images(ref_data, ref_slice, shape), train, floor_draws)
    paths = [Path(p) for p in samples]
    if len(set(paths)) < len(paths):
        raise click.UsageError("a file is given twice")
    stems = [p.stem for p in paths]
    unique = len(set(stems)) == len(stems)
    for path, stem in zip(paths, stems, strict=True):
        panel.add(stem if unique else f"{path.parent.name}/{stem}", load_npz(path))
    rows = panel.scores()
    table = markdown(rows)
    click.echo(table, nl=False)
    if out is not None:
        atomic_write_text(out, table)
        atomic_write_text(Path(out).with_suffix(".json"), as_json(rows))
        click.echo(f"wrote {out}")
    if baseline is not None:
        from ddim.eval import paired

        base = panel.spaces.features(load_npz(baseline))
        diffs = {}
        for path, name in zip(paths, panel.cells, strict=True):
            if path.resolve() != Path(baseline).resolve():
                x = panel.spaces.features(from_pixels(panel.samples(name)))
                diffs[f"{name} − {Path(baseline).stem}"] = paired.compare(
                    base, x, panel.reference, judges
                )
                click.echo(f"compared {name}", err=True)
        table = markdown(diffs, head="difference", bold_nonzero=True)
        click.echo("\n" + table, nl=False)
        if out is not None:
            stem = Path(out).with_suffix("")
            atomic_write_text(f"{stem}-paired.md", table)
            atomic_write_text(f"{stem}-paired.json", as_json(diffs))
            click.echo(f"wrote {stem}-paired.md")
