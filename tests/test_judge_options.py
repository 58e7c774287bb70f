"""``--judges`` on the ``ddim eval`` commands that score samples (:mod:`ddim.eval.panel`):
each command's sets reach the judges exactly as saved, the table has the floor and an
interval in every cell, the kept samples re-score to the same numbers with ``ddim eval
judge``, and misuse is one line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from test_cli import ok, run

import ddim
from ddim.eval.judges import Spaces, judge
from ddim.eval.panel import Panel, from_pixels, to_pixels
from ddim.formats.images import save_npz, to_uint8
from ddim.models.unet import UNet, UNetConfig

TINY = UNetConfig(
    in_channels=1, out_channels=1, ch=32, ch_mult=(1,), num_res_blocks=1,
    attn_resolutions=(), dropout=0.0, image_size=28,
)  # fmt: skip


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """sklearn's 8x8 digits scaled up to 28x28 in [-1, 1]."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images).float()[:, None] / 16 * 2 - 1
    return torch.nn.functional.interpolate(x[:400], size=(28, 28), mode="bilinear")


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits, write_checkpoint) -> dict[str, str]:
    """A tiny random 28 x 28 U-Net, a conditional one with 3 classes, and 400 digits
    (0:300 the training images, 300:400 the reference)."""
    root = tmp_path_factory.mktemp("judged")
    save_npz(root / "digits.npz", digits)
    torch.manual_seed(0)
    plain = write_checkpoint(
        root / "plain.safetensors", UNet(TINY).state_dict(), ddim.NoiseSchedule.linear(20),
        config=TINY,
    )  # fmt: skip
    config = dataclasses.replace(TINY, num_classes=3)
    model = UNet(config)
    with torch.no_grad():
        model.label_emb.weight.normal_(0, 1.0)
    cond = write_checkpoint(
        root / "cond.safetensors", model.state_dict(), ddim.NoiseSchedule.linear(20), config=config
    )
    return {"plain": str(plain), "cond": str(cond), "data": str(root / "digits.npz")}


JUDGING = ["--ref-slice", "300:400", "--train-slice", "0:300", "--floor-draws", "2"]


def test_the_panel_judges_a_cell_as_the_saved_file_holds_it(digits) -> None:
    panel = Panel.build(["fd-pca", "kid-mnist", "recall"], digits[300:], digits[:300], 0)
    identity = panel.tap("cell", lambda x: x.flatten(1))
    noisy = (digits[:40] + 0.01 * torch.randn(40, 1, 28, 28)).clamp(-1, 1)
    for part in noisy.split(16):
        assert torch.equal(identity(part), part.flatten(1))  # the features pass through
    pixels = panel.samples("cell")
    assert pixels.dtype == torch.uint8 and pixels.shape == (40, 1, 28, 28)
    np.testing.assert_array_equal(pixels.permute(0, 2, 3, 1).numpy(), to_uint8(noisy))
    assert torch.equal(to_pixels(from_pixels(pixels)), pixels)
    rows = panel.scores()
    assert list(rows) == ["cell (40)"]
    spaces = Spaces.build(digits[:300])
    direct = judge(spaces.features(from_pixels(pixels)), spaces.features(digits[300:]),
                   ["fd-pca", "kid-mnist", "recall"])  # fmt: skip
    assert rows["cell (40)"] == direct


def test_table1_judges_every_cell_and_keeps_what_ddim_eval_judge_rescores(
    files, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("DDIM_CACHE", str(tmp_path / "cache"))
    out = ok("eval", "table1", "--ckpt", files["plain"], "--ref-data", files["data"], *JUDGING,
             "-n", 12, "--batch-size", 5, "--steps", "2,3", "--etas", "0", "--no-sigma-hat",
             "--judges", "fd-pca,recall,recognizable", "--keep", tmp_path / "cells",
             "--out-dir", tmp_path / "t1")  # fmt: skip
    assert "| samples | fd-pca | recall | recognizable |" in out.output
    rows = json.loads((tmp_path / "t1" / "table1-judges.json").read_text())
    assert list(rows) == ["real images (12, 2 draws: mean [min, max])", "S2-eta0 (12)",
                          "S3-eta0 (12)"]  # fmt: skip
    for scores in rows.values():
        assert all(s["low"] <= s["value"] <= s["high"] for s in scores.values())
    assert rows["S2-eta0 (12)"]["fd-pca"]["value"] > rows[next(iter(rows))]["fd-pca"]["high"]
    kept = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert kept == ["S2-eta0.npz", "S3-eta0.npz"]
    sampled = ddim.load_pretrained(files["plain"])
    x = ddim.workflows.generate(*sampled, 12, (1, 28, 28), seed=0, batch_size=5,
                                options=ddim.SamplerOptions(steps=3))  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "cells" / "S3-eta0.npz")["samples"],
                                  to_uint8(x))  # the very samples of the cell  # fmt: skip
    ok("eval", "judge", tmp_path / "cells" / "S2-eta0.npz", tmp_path / "cells" / "S3-eta0.npz",
       "--ref-data", files["data"], *JUDGING, "--judges", "fd-pca,recall,recognizable",
       "--out", tmp_path / "again.md")  # fmt: skip
    assert json.loads((tmp_path / "again.json").read_text()) == rows


def test_solvers_and_guidance_judge_each_run(files, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DDIM_CACHE", str(tmp_path / "cache"))
    ok("eval", "solvers", "--ckpt", files["plain"], "--ref-data", files["data"], *JUDGING,
       "--floor-draws", 0, "-n", 6, "--solvers", "ddim,dpmpp-2m", "--calls", "4",
       "--fd-calls", "4", "--ddim-calls", "3", "--dim", 8, "--judges", "fd-mnist",
       "--out-dir", tmp_path / "s")  # fmt: skip
    rows = json.loads((tmp_path / "s" / "solvers-judges.json").read_text())
    points = json.loads((tmp_path / "s" / "solvers-fd.json").read_text())["points"]
    assert [p["solver"] for p in points] == ["ddim", "dpmpp-2m"]
    assert list(rows) == [f"{p['solver']}-{p['calls']}calls (6)" for p in points]
    out = ok("eval", "guidance", "--ckpt", files["cond"], "--ref-data", files["data"], *JUDGING,
             "-n", 10, "--steps", 2, "--weights", "0,2", "--judges", "fd-mlp,precision",
             "--out-dir", tmp_path / "g")  # fmt: skip
    rows = json.loads((tmp_path / "g" / "guidance-judges.json").read_text())
    assert list(rows) == ["real images (9, 2 draws: mean [min, max])", "cfg-w0 (9)",
                          "cfg-w2 (9)", "null-label (10)"]  # fmt: skip
    points = json.loads((tmp_path / "g" / "guidance.json").read_text())["points"]
    assert [p["n"] for p in points] == [9, 9]
    assert "| classifier-free (w) | 2 | " in out.output and " % [" in out.output  # Wilson


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--judges", "fd-mnist,fid"], "'fd-mnist,fid': judges are all or some of fd-mnist"),
        (["--keep", "k"], "--keep keeps the samples the judges see: give --judges"),
        (["--judges", "all", "--progress", "p"], "it cannot resume from --progress"),
        (["--judges", "recall"], "precision and recall need more than 6 images in each set"),
    ],
)  # fmt: skip
def test_bad_judge_options_are_one_line(files, args, message) -> None:
    result = run("eval", "table1", "--ckpt", files["plain"], "--ref-data", files["data"],
                 "-n", 2, "--steps", 2, "--etas", "0", *args)  # fmt: skip
    assert result.exit_code == 2 and message in result.output


def test_the_judges_need_images_not_statistics(files, tmp_path) -> None:
    from ddim.eval.metrics import FeatureStats

    stats = tmp_path / "stats.npz"
    FeatureStats.from_features(np.random.default_rng(0).normal(size=(50, 128))).save(stats)
    result = run("eval", "solvers", "--ckpt", files["plain"], "--ref-stats", stats,
                 "--judges", "all", "--calls", "4", "--dim", 4, "--out-dir", tmp_path)  # fmt: skip
    assert result.exit_code == 2
    assert "--judges needs --ref-data: they read the reference images" in result.output


def test_ddim_eval_judge_names_rows_by_folder_where_file_names_repeat(files, tmp_path) -> None:
    digits = np.load(files["data"])["samples"]
    for folder, part in (("a", digits[:50]), ("b", digits[50:100])):
        (tmp_path / folder).mkdir()
        np.savez(tmp_path / folder / "cell.npz", samples=part)
    common = ["--ref-data", files["data"], *JUDGING, "--floor-draws", 0, "--judges", "fd-pca"]
    ok("eval", "judge", tmp_path / "a/cell.npz", tmp_path / "b/cell.npz", *common,
       "--out", tmp_path / "j.md")  # fmt: skip
    assert list(json.loads((tmp_path / "j.json").read_text())) == ["a/cell (50)", "b/cell (50)"]
    result = run("eval", "judge", tmp_path / "a/cell.npz", tmp_path / "a/cell.npz", *common)
    assert result.exit_code == 2 and "a file is given twice" in result.output
