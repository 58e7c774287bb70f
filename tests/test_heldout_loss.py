"""The held-out denoising loss: closed forms for models whose error is known exactly, the
training loss as an independent reference, invariance to batching, and ``ddim eval loss``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import ddim
from ddim.cli.eval import eval_group
from ddim.eval.heldout_loss import heldout_loss, heldout_noise
from ddim.models.unet import UNet, UNetConfig
from ddim.train.loss import diffusion_loss

TS = (0, 3, 11, 19)


class Identity(nn.Module):
    """eps_theta(x_t, t) = x_t: its error is sqrt(ab) x0 + (sqrt(1 - ab) - 1) eps."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x


class Oracle(nn.Module):
    """The exact eps of a data set that is the one image ``x_star``."""

    def __init__(self, x_star: torch.Tensor, alpha_bar: torch.Tensor) -> None:
        super().__init__()
        self.x_star, self.alpha_bar = x_star, alpha_bar

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        return ((x.double() - a.sqrt() * self.x_star.double()) / (1 - a).sqrt()).float()


@pytest.fixture
def schedule() -> ddim.NoiseSchedule:
    return ddim.NoiseSchedule.linear(20, 1e-3, 0.2)


@pytest.fixture
def x0() -> torch.Tensor:
    return torch.rand(13, 1, 6, 6, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture
def config() -> UNetConfig:
    """A one-level 6 x 6 U-Net."""
    return UNetConfig(
        in_channels=1, out_channels=1, ch=32, ch_mult=(1,), num_res_blocks=1,
        attn_resolutions=(), dropout=0.0, image_size=6,
    )  # fmt: skip


@pytest.fixture
def model(config, perturbed_unet) -> UNet:
    return perturbed_unet(config)


def test_the_identity_model_scores_its_closed_form(schedule, x0) -> None:
    loss = heldout_loss(Identity(), schedule, x0, TS, seed=4, batch_size=5)
    noise = heldout_noise(x0.shape, TS, seed=4).double()
    for k, t in enumerate(TS):
        a = schedule.alpha_bar[t]
        err = a.sqrt() * x0.double() + ((1 - a).sqrt() - 1) * noise[k]
        # x_t is formed in float32, as in training: agreement to float32 rounding.
        assert loss.per_t[k] == pytest.approx(float(err.pow(2).mean()), rel=1e-6)
    assert loss.mean == pytest.approx(sum(loss.per_t) / 4, rel=1e-15)


def test_the_exact_eps_of_a_one_image_data_set_scores_zero(schedule, x0) -> None:
    x_star = x0[:1]
    oracle = Oracle(x_star, schedule.alpha_bar)
    loss = heldout_loss(oracle, schedule, x_star.expand(7, -1, -1, -1), range(20))
    assert max(loss.per_t) < 1e-10
    # The zero model's error is the noise itself.
    zero = heldout_loss(lambda x, t: torch.zeros_like(x), schedule, x0, TS, seed=2)
    noise = heldout_noise(x0.shape, TS, seed=2).double()
    assert zero.per_t == pytest.approx([float(n.pow(2).mean()) for n in noise], rel=1e-12)


def test_it_equals_the_training_loss_on_the_same_draws(schedule, x0, model) -> None:
    loss = heldout_loss(model, schedule, x0, TS, seed=3)
    noise = heldout_noise(x0.shape, TS, seed=3)
    with torch.no_grad():
        for k, t in enumerate(TS):
            tt = torch.full((x0.shape[0],), t)
            train = diffusion_loss(model, x0, tt, noise[k], schedule.alpha_bar)
            assert loss.per_t[k] == pytest.approx(train.item(), rel=1e-5)


def test_batching_does_not_change_it(schedule, x0, model) -> None:
    one = heldout_loss(model, schedule, x0, TS, batch_size=13)
    many = heldout_loss(model, schedule, x0, TS, batch_size=4)
    assert many.per_t == pytest.approx(one.per_t, rel=1e-6)
    assert one.to_dict() == {"t0": one.per_t[0], "t3": one.per_t[1], "t11": one.per_t[2],
                             "t19": one.per_t[3], "mean": one.mean}  # fmt: skip


@pytest.mark.parametrize("timesteps", [(), (0, 20), (-1,)])
def test_timesteps_outside_the_schedule_are_refused(schedule, x0, timesteps) -> None:
    with pytest.raises(ValueError, match=r"timesteps must be one or more of 0\.\.19"):
        heldout_loss(Identity(), schedule, x0, timesteps)


@pytest.fixture
def run_files(tmp_path, write_checkpoint, x0, config):
    sched = ddim.NoiseSchedule.linear(20, 1e-3, 0.2)
    paths = []
    for step in (1, 2):
        torch.manual_seed(step)
        ema, raw = UNet(config).state_dict(), UNet(config).state_dict()
        path = tmp_path / f"step_{step}.safetensors"
        paths.append(str(write_checkpoint(path, ema, sched, config=config, model=raw, step=step)))
    np.savez(tmp_path / "heldout.npz", images=x0.numpy())  # floats in [-1, 1], read as they are
    return paths, str(tmp_path / "heldout.npz"), config, sched


def test_loss_command_scores_each_checkpoint_on_the_same_noise(run_files, tmp_path, x0) -> None:
    paths, data, config, sched = run_files
    result = CliRunner().invoke(eval_group, [
        "loss", *paths, "--data", data, "--slice", "2:13", "--timesteps", "1,10,19",
        "--weights", "model", "--seed", "5", "--batch-size", "4", "--out-dir", str(tmp_path / "o"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "o" / "loss.json").read_text())
    assert saved["meta"]["n"] == 11 and saved["meta"]["weights"] == "model"
    assert [row["step"] for row in saved["rows"]] == [1, 2]
    for path, row in zip(paths, saved["rows"], strict=True):
        model, _ = ddim.load_pretrained(path, which="model")
        want = heldout_loss(model, sched, x0[2:13], (1, 10, 19), seed=5, batch_size=4)
        assert [row["t1"], row["t10"], row["t19"]] == pytest.approx(list(want.per_t), rel=1e-12)
        assert row["mean"] == pytest.approx(want.mean, rel=1e-12)
    table = (tmp_path / "o" / "loss.md").read_text().splitlines()
    assert table[2] == "| checkpoint | step | mean | t = 1 | t = 10 | t = 19 |"
    assert table[4].startswith(f"| {paths[0]} | 1 | {saved['rows'][0]['mean']:.5f} |")


def test_loss_command_names_missing_raw_weights(run_files, tmp_path, write_checkpoint) -> None:
    paths, data, config, sched = run_files
    ema_only = write_checkpoint(
        tmp_path / "ema.safetensors", UNet(config).state_dict(), sched, config=config
    )
    result = CliRunner().invoke(
        eval_group, ["loss", str(ema_only), "--data", data, "--weights", "model"]
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {ema_only} stores EMA weights only; load it with which='ema'"
    ]


def test_a_missing_checkpoint_stops_the_command_before_any_scoring(run_files, tmp_path) -> None:
    paths, data, _, _ = run_files
    missing = str(tmp_path / "step_3.safetensors")
    out = tmp_path / "o"
    result = CliRunner().invoke(
        eval_group, ["loss", paths[0], missing, "--data", data, "--out-dir", str(out)]
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: checkpoint {missing} does not exist or is not a file"
    ]
    assert not out.exists()
