"""The blob rule and the memorization check: statistics worked out by hand, quantiles
against numpy, nearest neighbours against a brute-force loop, and both CLI commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ddim
from ddim.cli.eval import eval_group
from ddim.eval.blobs import BlobRule, brightness
from ddim.eval.memorization import memorization, nearest_neighbours
from ddim.formats.images import save_npz
from ddim.models.unet import UNet, UNetConfig


def unit_to_model(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] to the model convention [-1, 1]."""
    return x * 2 - 1


def test_brightness_by_hand() -> None:
    # 8 x 8, border 2: the frame has 64 - 16 = 48 pixels. Put 0.5 on 6 frame pixels and
    # 1.0 on 4 inside pixels: mean (3 + 4) / 64, border mean 3 / 48.
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, :6] = 0.5
    x[0, 0, 3:5, 3:5] = 1.0
    mean, frame = brightness(unit_to_model(x), border=2)
    assert mean.item() == pytest.approx(7 / 64, abs=1e-15)
    assert frame.item() == pytest.approx(3 / 48, abs=1e-15)


def test_brightness_averages_channels_and_clips() -> None:
    x = torch.full((2, 3, 6, 6), 0.25)
    x[1] = 3.0  # clipped to 1 in [-1, 1], i.e. 1.0 in [0, 1]
    mean, frame = brightness(x, border=1)
    assert mean.tolist() == pytest.approx([0.625, 1.0], abs=1e-15)
    assert frame.tolist() == pytest.approx([0.625, 1.0], abs=1e-15)


def test_brightness_rejects_a_border_with_no_inside() -> None:
    with pytest.raises(ValueError, match="leaves no inside in 6x6"):
        brightness(torch.zeros(1, 1, 6, 6), border=3)


def test_rule_takes_the_percentiles_of_the_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(501, 1, 10, 10, generator=gen) * torch.rand(501, 1, 1, 1, generator=gen)
    rule = BlobRule.from_reference(unit_to_model(ref), percentiles=(2.0, 97.0), border=2)
    mean, frame = (t.numpy() for t in brightness(unit_to_model(ref), border=2))
    assert rule.mean == pytest.approx(tuple(np.percentile(mean, [2.0, 97.0])), rel=1e-12)
    assert rule.border_mean == pytest.approx(tuple(np.percentile(frame, [2.0, 97.0])), rel=1e-12)
    # Linear-interpolated percentiles of 501 values: each range leaves out at most
    # ceil(0.05 * 501) + 1 images, and the union at most twice that.
    flagged = int(rule.is_blob(unit_to_model(ref)).sum())
    assert 1 <= flagged <= 2 * 27


def test_is_blob_flags_a_grey_background_and_a_bright_blob() -> None:
    digit = torch.zeros(1, 1, 28, 28)
    digit[0, 0, 8:20, 12:16] = 1.0  # a "1": mean 48 / 784, black border
    rule = BlobRule(mean=(0.03, 0.3), border_mean=(0.0, 0.03), border=3)
    grey = digit.clone() * 0.5 + 0.2  # mean in range, border 0.2
    blob = torch.zeros(1, 1, 28, 28)
    blob[0, 0, 4:24, 4:24] = 0.9  # black border, mean 0.46
    x = unit_to_model(torch.cat([digit, grey, blob]))
    assert rule.is_blob(x).tolist() == [False, True, True]
    assert rule.rate(x) == pytest.approx(2 / 3)
    assert "3-px border mean outside [0.0000, 0.0300]" in rule.describe()


def test_nearest_neighbours_match_a_brute_force_loop() -> None:
    gen = torch.Generator().manual_seed(3)
    keys = torch.rand(37, 1, 5, 5, generator=gen) * 2 - 1
    queries = torch.rand(11, 1, 5, 5, generator=gen) * 2 - 1
    dist, index = nearest_neighbours(queries, keys, chunk=4)
    q = ((queries.double() + 1) / 2).flatten(1)
    k = ((keys.double() + 1) / 2).flatten(1)
    for i in range(11):
        d = ((q[i] - k) ** 2).sum(1).sqrt()
        assert index[i].item() == int(d.argmin())
        assert dist[i].item() == pytest.approx(d.min().item(), abs=1e-12)


def test_a_copied_training_image_is_at_distance_zero() -> None:
    gen = torch.Generator().manual_seed(4)
    train = torch.rand(20, 1, 6, 6, generator=gen) * 2 - 1
    heldout = torch.rand(5, 1, 6, 6, generator=gen) * 2 - 1
    samples = torch.cat([train[7:8], torch.rand(3, 1, 6, 6, generator=gen) * 2 - 1])
    report = memorization(samples, train, heldout)
    assert report.samples.values[0].item() == pytest.approx(0.0, abs=1e-6)
    assert report.samples.indices[0].item() == 7
    summary = report.summary()
    assert summary["samples_closer_than_any_heldout"] == pytest.approx(0.25)
    assert summary["samples"]["q0"] == pytest.approx(0.0, abs=1e-6)
    top, neighbour = report.closest_pairs(samples, train, 2)
    assert torch.equal(top[0], train[7]) and torch.equal(neighbour[0], train[7])


def test_nearest_neighbours_checks_shapes() -> None:
    with pytest.raises(ValueError, match=r"queries \(1, 4, 4\) and keys \(1, 5, 5\)"):
        nearest_neighbours(torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 5, 5))


@pytest.fixture(scope="module")
def files(tmp_path_factory, write_checkpoint):
    """A tiny U-Net checkpoint (T = 20), 40 "real" images and 10 "samples" (.npz)."""
    root = tmp_path_factory.mktemp("checks")
    config = UNetConfig(
        in_channels=1, out_channels=1, ch=32, ch_mult=(1,), num_res_blocks=1,
        attn_resolutions=(), dropout=0.0, image_size=12,
    )  # fmt: skip
    torch.manual_seed(0)
    ckpt = root / "tiny.safetensors"
    write_checkpoint(ckpt, UNet(config).state_dict(), ddim.NoiseSchedule.linear(20), config=config)
    gen = torch.Generator().manual_seed(5)
    real = torch.zeros(40, 1, 12, 12)
    real[:, :, 3:9, 3:9] = torch.rand(40, 1, 6, 6, generator=gen)
    samples = torch.cat([real[:2], torch.full((8, 1, 12, 12), 0.5)])  # 2 copies, 8 grey
    save_npz(root / "real.npz", unit_to_model(real))
    save_npz(root / "samples.npz", unit_to_model(samples))
    return str(ckpt), str(root / "real.npz"), str(root / "samples.npz")


def test_blobs_command_counts_the_grey_samples(files, tmp_path) -> None:
    ckpt, real, samples = files
    result = CliRunner().invoke(eval_group, [
        "blobs", "--ckpt", ckpt, "--samples", samples, "-n", "10", "--ref-data", real,
        "--ref-slice", "0:30", "--heldout-slice", "30:40", "--border", "2",
        "--percentiles", "0,100", "--out-dir", str(tmp_path),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "samples: 8 of 10 are blobs (80.00 %)" in result.output
    saved = json.loads((tmp_path / "blobs.json").read_text())
    assert saved["blobs"] == 8 and saved["rule"]["border"] == 2
    assert (tmp_path / "blobs.png").exists()


def test_memorization_command_finds_the_copies(files, tmp_path) -> None:
    ckpt, real, samples = files
    result = CliRunner().invoke(eval_group, [
        "memorization", "--ckpt", ckpt, "--samples", samples, "-n", "10",
        "--train-data", real, "--train-slice", "0:30", "--heldout-slice", "30:40",
        "--pairs", "4", "--out-dir", str(tmp_path),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "memorization.json").read_text())
    assert saved["samples"]["q0"] == pytest.approx(0.0, abs=1e-6)
    assert saved["samples_closer_than_any_heldout"] == pytest.approx(0.2)
    assert saved["n_heldout"] == 10
    for name in ("memorization.md", "memorization_hist.png", "memorization_pairs.png"):
        assert (tmp_path / name).exists()


def test_memorization_command_draws_samples_from_the_model(files, tmp_path) -> None:
    ckpt, real, _ = files
    result = CliRunner().invoke(eval_group, [
        "memorization", "--ckpt", ckpt, "-n", "3", "--steps", "4", "--train-data", real,
        "--train-slice", "0:30", "--heldout-slice", "30:40", "--out-dir", str(tmp_path),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "memorization.json").read_text())
    assert saved["meta"]["steps"] == 4 and saved["n_samples"] == 3


def test_too_few_samples_is_a_one_line_error(files, tmp_path) -> None:
    ckpt, real, samples = files
    result = CliRunner().invoke(eval_group, [
        "blobs", "--ckpt", ckpt, "--samples", samples, "-n", "11", "--ref-data", real,
        "--out-dir", str(tmp_path),
    ])  # fmt: skip
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {samples} holds 10 images; -n asks for 11"
    ]
