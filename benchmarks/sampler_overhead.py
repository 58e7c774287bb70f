"""What ``ddim.sample`` costs on top of the model calls it makes, for every solver.

A small convolutional ε-model (about 1M parameters) on a batch of 64 MNIST-sized images:
the time of ``ddim.sample(steps=S, solver=...)`` against the time of as many bare model
calls as that run makes (``ddim.model_calls``), measured side by side in one run
(alternating call by call, after a warm-up) and printed as ratios of the medians and of
the minima (the minimum is the least disturbed by other work on a shared machine). Target:
at most 1.03.

    python benchmarks/sampler_overhead.py [--steps 50] [--batch-size 64] [--repeats 7]
                                          [--solver ddim --solver dpmpp-2m ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import ddim
from ddim.names import SOLVERS


class SmallEps(nn.Module):
    """A three-level conv net (28 -> 14 -> 7 and back) with a learned timestep embedding."""

    def __init__(self, T: int = 1000, ch: int = 36) -> None:
        super().__init__()
        widths = (ch, 2 * ch, 4 * ch)
        self.temb = nn.Embedding(T, widths[-1])
        self.conv_in = nn.Conv2d(1, widths[0], 3, padding=1)
        self.down1 = nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(widths[1], widths[2], 3, stride=2, padding=1)
        self.mid = nn.ModuleList(nn.Conv2d(widths[2], widths[2], 3, padding=1) for _ in range(3))
        self.up2 = nn.ConvTranspose2d(widths[2], widths[1], 4, stride=2, padding=1)
        self.up1 = nn.ConvTranspose2d(widths[1], widths[0], 4, stride=2, padding=1)
        self.conv_out = nn.Conv2d(widths[0], 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h1 = torch.relu(self.conv_in(x))
        h2 = torch.relu(self.down1(h1))
        h = torch.relu(self.down2(h2)) + self.temb(t)[:, :, None, None]
        for conv in self.mid:
            h = h + torch.relu(conv(h))
        h = torch.relu(self.up2(h)) + h2
        h = torch.relu(self.up1(h)) + h1
        return self.conv_out(h)


def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--eta", type=float, default=0.0, help="for solver ddim")
    parser.add_argument("--spacing", default="logsnr", help="for the solvers other than ddim")
    parser.add_argument("--solver", action="append", choices=SOLVERS, help="default: all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = SmallEps().to(args.device).eval()
    sched = ddim.NoiseSchedule.linear()
    x_T = torch.randn(args.batch_size, 1, 28, 28, device=args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, batch {args.batch_size}, 1x28x28")
    print(f"device: {args.device}, {torch.get_num_threads()} threads")
    print(
        "| solver | model calls | bare calls (s) | ddim.sample (s) | ratio of medians | of minima |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for solver in args.solver or SOLVERS:
        spacing = "uniform" if solver == "ddim" else args.spacing
        eta = args.eta if solver == "ddim" else 0.0
        calls = ddim.model_calls(sched, args.steps, spacing, solver)
        ts = sched.timesteps(args.steps, spacing).tolist()
        t_batches = [torch.full((args.batch_size,), ts[i % len(ts)], device=args.device)
                     for i in range(calls)]  # fmt: skip

        @torch.no_grad()
        def bare(t_batches: list[torch.Tensor] = t_batches) -> None:
            for t in t_batches:
                model(x_T, t)

        def sampler(solver: str = solver, spacing: str = spacing, eta: float = eta) -> None:
            ddim.sample(
                model, x_T, sched, steps=args.steps, spacing=spacing, eta=eta, seed=0, solver=solver
            )

        bare()
        sampler()
        bare_times, sample_times = [], []
        for _ in range(args.repeats):
            bare_times.append(time_once(bare))
            sample_times.append(time_once(sampler))
        bare_s, sample_s = statistics.median(bare_times), statistics.median(sample_times)
        ratio_min = min(sample_times) / min(bare_times)
        print(
            f"| {solver} | {calls} | {bare_s:.3f} | {sample_s:.3f} | {sample_s / bare_s:.3f} "
            f"| {ratio_min:.3f} |"
        )


if __name__ == "__main__":
    main()
