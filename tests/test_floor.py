"""The real-data floor of FD: each draw and block against the textbook formula on the same
images, the zero floor of a set against itself, the summary by hand, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import linalg

from ddim.cli.eval import eval_group
from ddim.cli.eval_options import load_images
from ddim.eval.floor import Floor, real_data_floor
from ddim.eval.metrics import FeatureStats, pixel_features
from ddim.formats.images import save_npz


def textbook_fd(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b)) of two (N, D) feature sets."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = linalg.sqrtm(sa @ sb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * cross))


def images(n: int, seed: int, shift: float = 0.0, size: int = 0) -> torch.Tensor:
    """``n`` random images in [-1, 1]: 2 x 3, or ``size`` square."""
    g = torch.Generator().manual_seed(seed)
    h, w = (size, size) if size else (2, 3)
    return (torch.rand(n, 1, h, w, generator=g) + shift).clamp(0, 1) * 2 - 1


def test_every_draw_and_block_is_the_textbook_fd_of_those_images():
    train, ref = images(50, 0), images(40, 1, shift=0.2)
    floor = real_data_floor(pixel_features, train, FeatureStats.from_features(ref.flatten(1)),
                            n=20, draws=3, seed=7, batch_size=16)  # fmt: skip
    x, r = train.flatten(1).double().numpy(), ref.flatten(1).double().numpy()
    for i, fd in enumerate(floor.draws):  # draw i: the first n of randperm with seed 7 + i
        index = torch.randperm(50, generator=torch.Generator().manual_seed(7 + i))[:20]
        assert fd == pytest.approx(textbook_fd(x[index.numpy()], r), rel=1e-9)
    assert len(set(floor.draws)) == 3
    assert [(a, b) for a, b, _ in floor.blocks] == [(0, 20), (20, 40)]  # 40:60 does not fit
    for a, b, fd in floor.blocks:
        assert fd == pytest.approx(textbook_fd(x[a:b], r), rel=1e-9)


def test_drawing_every_image_of_the_reference_itself_scores_zero():
    x = images(30, 2)
    ref = FeatureStats.from_features(x.flatten(1))
    floor = real_data_floor(pixel_features, x, ref, n=30, draws=2)
    assert floor.draws == pytest.approx([0.0, 0.0], abs=1e-9)
    assert len(floor.blocks) == 1 and floor.blocks[0][2] == pytest.approx(0.0, abs=1e-9)


def test_summary_by_hand():
    # draws 1, 2, 3, 6: mean 3, sample variance (4 + 1 + 0 + 9) / 3
    s = Floor(n=5, seed=0, draws=[1.0, 2.0, 3.0, 6.0], blocks=[]).summary()
    assert s == pytest.approx({"mean": 3.0, "std": (14 / 3) ** 0.5, "min": 1.0, "max": 6.0})


@pytest.mark.parametrize(("n", "draws", "message"), [(31, 1, "n = 31 of 30"), (5, 0, "one draw")])
def test_bad_counts_are_one_clear_error(n, draws, message):
    x = images(30, 3)
    with pytest.raises(ValueError, match=message):
        real_data_floor(pixel_features, x, FeatureStats.from_features(x.flatten(1)), n, draws)


def test_cli_writes_the_floor_of_the_slice_against_the_reference(tmp_path):
    data = tmp_path / "real.npz"
    x = images(36, 4, size=5)
    save_npz(data, x)
    args = ["floor", "--data", str(data), "--slice", "0:24", "--ref-slice", "24:36",
            "--features", "pixels", "--image-size", "5", "-n", "8", "--draws", "4", "--seed", "3",
            "--out-dir", str(tmp_path / "out")]  # fmt: skip
    result = CliRunner().invoke(eval_group, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out/floor.json").read_text())
    x = load_images(str(data), slice(None), (1, 5, 5))  # as saved: 8-bit levels
    ref = FeatureStats.from_features(x[24:].flatten(1))
    expected = real_data_floor(pixel_features, x[:24], ref, n=8, draws=4, seed=3)
    assert saved["draws"] == pytest.approx(expected.draws, rel=1e-12)
    assert [b[:2] for b in saved["blocks"]] == [[0, 8], [8, 16], [16, 24]]
    assert saved["summary"]["mean"] == pytest.approx(np.mean(expected.draws), rel=1e-12)
    assert saved["meta"]["ref"] == f"{data}[24:36]"
    assert "4 random draws of 8: FD mean" in result.output
    bad = CliRunner().invoke(eval_group, [*args[:-2], "-n", "25", "--out-dir", str(tmp_path / "b")])
    assert (bad.exit_code, bad.output) == (2, "error: cannot draw n = 25 of 24 real images\n")
