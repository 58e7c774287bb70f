"""``ddim eval judge``: score sets of samples with every judge, each with its interval, next
to the floor of real images (:mod:`ddim.eval.judges`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ddim.cli.eval_options import Slice, load_images
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
@option("--out", default=None, metavar="PATH.md", help="also write the table (and a .json)")
def judge_command(
    samples: tuple[str, ...],
    ref_data: str,
    ref_slice: slice,
    train_slice: slice,
    floor_draws: int,
    out: str | None,
) -> None:
    """Score each SAMPLES.npz (uint8 images, as `ddim sample --out x.npz` writes) with FD in
    three feature spaces, KID, precision, recall and recognizability, each with a 95 %
    interval, and (first row) random draws of as many training images: the floor."""
    from ddim.eval.judges import JUDGES, Spaces, floor, judge
    from ddim.formats.archives import load_npz
    from ddim.formats.atomic import atomic_write_text

    shape = (1, 28, 28)
    reference_images = load_images(ref_data, ref_slice, shape)
    train = load_images(ref_data, train_slice, shape)
    spaces = Spaces.build(train)
    reference = spaces.features(reference_images)
    sets = {Path(p).stem: load_npz(p) for p in samples}
    rows = {}
    n = len(next(iter(sets.values())))
    if floor_draws:
        rows[f"real images ({n}, {floor_draws} draws: mean [min, max])"] = floor(
            train, n, reference, spaces.features, draws=floor_draws
        )
    for name, x in sets.items():
        rows[f"{name} ({len(x)})"] = judge(spaces.features(x), reference)
        click.echo(f"scored {name}", err=True)
    header = "| samples | " + " | ".join(JUDGES) + " |"
    lines = [header, "|---|" + "---:|" * len(JUDGES)]
    lines += [f"| {name} | " + " | ".join(str(s[j]) for j in JUDGES) + " |"
              for name, s in rows.items()]  # fmt: skip
    table = "\n".join(lines) + "\n"
    click.echo(table, nl=False)
    if out is not None:
        atomic_write_text(out, table)
        atomic_write_text(Path(out).with_suffix(".json"), json.dumps(
            {name: {j: vars(v) for j, v in s.items()} for name, s in rows.items()}, indent=1,
        ) + "\n")  # fmt: skip
        click.echo(f"wrote {out}")
