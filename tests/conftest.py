"""Shared fixtures: one thread and an empty working directory per test, small deterministic
ε-models that every sampler test can drive, and tiny U-Net checkpoints."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ddim
import ddim.precision
from ddim.formats.checkpoint import save_weights
from ddim.models.unet import UNet, UNetConfig


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small models run fastest, and most reproducibly, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def cpu_without_native_bf16(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--precision auto`` (the CLI's default) picks fp32 on every test machine, so results
    that tests compare with the library's fp32 default do not depend on the CPU's bf16
    instructions. Tests marked ``native_cpu`` see the real CPU."""
    if request.node.get_closest_marker("native_cpu") is None:
        monkeypatch.setattr(ddim.precision, "cpu_bf16_flags", lambda: ())


@pytest.fixture(autouse=True)
def empty_working_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commands that write to default paths (``samples.png``) write into a fresh folder, so
    the suite passes whatever a user has made in the checkout (README: sample, then test);
    cached reference statistics go to a fresh ``$DDIM_CACHE``, not the user's."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    monkeypatch.setenv("DDIM_CACHE", str(tmp_path_factory.mktemp("ddim-cache")))


class WigglyEps(torch.nn.Module):
    """A non-trivial ε-model: nonlinear in ``x``, varying with ``t``, mixing channels.

    Its leading term ``sqrt(1 - a_t) x`` is the exact ε of N(0, I) data, so trajectories stay
    of order one; the rest perturbs it in a way that depends on ``x``, ``t`` and the channel.
    """

    def __init__(self, sched: ddim.NoiseSchedule, channels: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mix = torch.nn.Parameter(torch.randn(channels, channels, generator=g) / channels)
        self.register_buffer("sigma", (1 - sched.alpha_bar).sqrt())
        self.T = sched.num_timesteps

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = (-1, *([1] * (x.ndim - 1)))
        s = (t.to(x.dtype) / self.T).view(shape)
        mixed = self._mix_channels(x)
        wiggle = 0.1 * torch.tanh(mixed) * (0.5 + s) + 0.05 * torch.sin(3 * x) * (1 - s)
        return self.sigma[t].to(x.dtype).view(shape) * x + wiggle

    def _mix_channels(self, x: torch.Tensor) -> torch.Tensor:
        """``mix @ x`` over the channel axis as a fixed sum of scaled channels: a batched
        matmul (einsum) picks kernels by batch size, and its rounding then differs."""
        mix = self.mix.to(x.dtype)
        out = [sum(mix[d, c] * x[:, c] for c in range(x.shape[1])) for d in range(mix.shape[0])]
        return torch.stack(out, dim=1)


@pytest.fixture
def sched() -> ddim.NoiseSchedule:
    return ddim.NoiseSchedule.linear(1000, 1e-4, 0.02)


@pytest.fixture
def eps_model(sched: ddim.NoiseSchedule) -> WigglyEps:
    return WigglyEps(sched)


@pytest.fixture(scope="session")
def tiny_config() -> UNetConfig:
    """An 8 x 8 grayscale U-Net with two levels and attention at 4 x 4."""
    return UNetConfig(
        in_channels=1,
        out_channels=1,
        ch=32,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
        image_size=8,
    )


@pytest.fixture(scope="session")
def perturbed_unet(tiny_config: UNetConfig) -> Callable[..., UNet]:
    """``perturbed_unet(config=tiny_config, seed=0)``: an eval-mode U-Net built after
    ``torch.manual_seed(seed)`` whose every parameter (norm scales included) is then moved
    away from its init by a little noise."""

    def make(config: UNetConfig = tiny_config, seed: int = 0) -> UNet:
        torch.manual_seed(seed)
        model = UNet(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return model

    return make


@pytest.fixture(scope="session")
def write_checkpoint(tiny_config: UNetConfig) -> Callable[..., Path]:
    """``write_checkpoint(path, ema, schedule, *, config=tiny_config, model=None, step=0,
    extra_meta=None)``: :func:`ddim.formats.checkpoint.save_weights` with the data shape that
    ``config`` implies; returns ``path``."""

    def write(
        path: Path,
        ema: Mapping[str, torch.Tensor],
        schedule: ddim.NoiseSchedule,
        *,
        config: UNetConfig = tiny_config,
        model: Mapping[str, torch.Tensor] | None = None,
        step: int = 0,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> Path:
        save_weights(
            path,
            model,
            ema,
            model_config=config.to_dict(),
            schedule=schedule,
            data_shape=(config.in_channels, config.image_size, config.image_size),
            step=step,
            extra_meta=extra_meta,
        )
        return path

    return write


GUIDED_SCHEDULE = ddim.NoiseSchedule.linear(100, 1e-3, 0.05)


@pytest.fixture(scope="module")
def ckpts(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_config: UNetConfig,
    perturbed_unet: Callable[..., UNet],
    write_checkpoint: Callable[..., Path],
) -> dict[str, Path]:
    """A tiny class-conditional checkpoint (3 classes, its label embedding moved away from
    zero), an unconditional one, and four 8 x 8 images in an .npz, for the CLI tests."""
    root = tmp_path_factory.mktemp("guided")
    config = dataclasses.replace(tiny_config, num_classes=3)
    model = perturbed_unet(config)
    with torch.no_grad():
        model.label_emb.weight.normal_(0, 1.0)
    rng = np.random.default_rng(0)
    np.savez(root / "x.npz", x=rng.integers(0, 256, (4, 8, 8), dtype=np.uint8))
    return {
        "cond": write_checkpoint(
            root / "c.safetensors", model.state_dict(), GUIDED_SCHEDULE, config=config
        ),  # fmt: skip
        "plain": write_checkpoint(
            root / "p.safetensors", perturbed_unet().state_dict(), GUIDED_SCHEDULE
        ),
        "images": root / "x.npz",
    }
