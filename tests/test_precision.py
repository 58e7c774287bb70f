"""The model call's precision: what ``auto`` picks, and that only the model call changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ddim
from ddim import precision


class RecordingEps(torch.nn.Module):
    """The exact eps of N(0, I) data, which also records the autocast state of each call."""

    def __init__(self, sched: ddim.NoiseSchedule) -> None:
        super().__init__()
        self.sigma = (1 - sched.alpha_bar).sqrt()
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        enabled = torch.is_autocast_enabled("cpu")
        self.seen.append((enabled, torch.get_autocast_dtype("cpu")))
        eps = self.sigma[t].to(x.dtype).view(-1, 1) * x
        return eps.to(torch.bfloat16) if enabled else eps  # what a bf16 network would return


def test_auto_on_a_cpu_follows_its_native_bf16(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())
    chosen, why = precision.choose("auto", "cpu")
    assert chosen == "fp32" and "no native bf16" in why
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("amx_bf16",))
    assert precision.choose("auto", "cpu") == ("bf16", "the CPU has native bf16 (amx_bf16)")
    assert precision.choose("bf16", "cpu") == ("bf16", "asked for")


def test_bad_precisions_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        precision.choose("fp8", "cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        precision.choose("fp16", "cpu")


@pytest.mark.native_cpu
def test_cpu_flags_are_read_from_cpuinfo() -> None:
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        words = set()
    assert precision.cpu_bf16_flags() == tuple(f for f in ("avx512_bf16", "amx_bf16") if f in words)


def test_bf16_runs_only_the_model_call_in_bf16(sched) -> None:
    x_T = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = RecordingEps(sched)
    exact = ddim.sample(model, x_T, sched, steps=10)
    assert exact.dtype == torch.float64 and {s[0] for s in model.seen} == {False}
    model.seen.clear()
    low = ddim.sample(model, x_T, sched, steps=10, precision="bf16")
    assert low.dtype == torch.float64
    assert model.seen == [(True, torch.bfloat16)] * 10
    # eps rounded to bf16 (8 bits of mantissa) moves x_0 by well under a percent, not more.
    error = (low - exact).abs().max().item()
    assert 0 < error < 0.02 * exact.abs().max().item()
    inverted = ddim.invert(model, exact, sched, steps=10, precision="bf16")
    assert inverted.dtype == torch.float64 and model.seen[-1] == (True, torch.bfloat16)
