"""Training throughput of ``ddim.models.UNet`` against a diffusers ``UNet2DModel`` of the same size.

Both models are built from one :class:`UNetConfig` (diffusers in its DDPM layout: the same
channels, blocks, attention resolutions, padding and time embedding, so the parameter
counts match), live side by side, and run full training steps (q-sample, eps-MSE forward,
backward, Adam step) on the same batches; ours runs twice, in the default memory layout
and channels-last (``training.channels_last``), and with ``--bf16`` both again under bf16
autocast (``training.precision: bf16``). Repetitions alternate the order of the
models to cancel drift. Peak memory is measured per model in a fresh process:
``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS
(``resource.getrusage``) on the CPU.

    python benchmarks/train_throughput.py --preset mnist --device cuda
    python benchmarks/train_throughput.py --preset cifar10 --batch-size 128 --repeats 5
    python benchmarks/train_throughput.py --bf16 --no-memory   # is bf16 worth it on this CPU?
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from torch import nn

from ddim.formats.config_file import read_yaml
from ddim.formats.diffusers import diffusers_unet_config, from_diffusers
from ddim.models import UNet, UNetConfig
from ddim.precision import autocast
from ddim.schedule import NoiseSchedule
from ddim.train.loss import diffusion_loss

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PRESETS = {
    # the bundled model's architecture, as configs/mnist.yaml trains it
    "mnist": UNetConfig.from_dict(read_yaml(CONFIGS / "mnist.yaml")["model"]),
    "cifar10": UNetConfig(),  # the official CIFAR-10 model, 35.7M parameters
}
#: Our U-Net as ``training.channels_last`` runs it, as it runs by default, and diffusers'.
MODELS = ("ours-cl", "ours", "diffusers")


def build(which: str, config: UNetConfig, device: torch.device) -> nn.Module:
    """Our ``UNet`` or the same network as a diffusers ``UNet2DModel`` (in the layout of
    :func:`ddim.formats.diffusers.diffusers_unet_config`, behind its eps-model adapter), in
    train mode on ``device``."""
    if which.startswith("ours"):
        model = UNet(config)
    else:
        from diffusers import UNet2DModel

        model = from_diffusers(UNet2DModel(**diffusers_unet_config(config)))
    model = model.to(device).train()
    return model.to(memory_format=torch.channels_last) if which.startswith("ours-cl") else model


class Trainer:
    """One model, its Adam optimizer and a fixed pool of batches; ``run(n)`` takes n steps."""

    def __init__(self, which: str, config: UNetConfig, batch_size: int, device: torch.device):
        torch.manual_seed(0)
        self.model = build(which, config, device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=2e-4)
        self.device = device
        g = torch.Generator().manual_seed(1)
        shape = (batch_size, config.in_channels, config.image_size, config.image_size)
        self.batches = [
            (
                torch.rand(shape, generator=g).mul(2).sub(1).to(device),
                torch.randn(shape, generator=g).to(device),
                torch.randint(0, 1000, (batch_size,), generator=g).to(device),
            )
            for _ in range(4)
        ]
        self.forward = torch.compile(self.model) if which.endswith("compiled") else self.model
        if which.startswith("ours-cl"):
            layout = torch.channels_last
            self.batches = [(x.contiguous(memory_format=layout), n, t) for x, n, t in self.batches]
        self.alpha_bar = NoiseSchedule.linear(1000).alpha_bar.to(device)
        self.precision = "bf16" if which.endswith("bf16") else "fp32"
        self.steps = 0

    def step(self) -> None:
        x0, noise, t = self.batches[self.steps % len(self.batches)]
        with autocast(self.precision, self.device):
            loss = diffusion_loss(self.forward, x0, t, noise, self.alpha_bar)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.steps += 1

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` training steps, synchronised on the device."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_peak_mib() -> tuple[float, str]:
    """This process's peak resident set size in MiB, and where the figure comes from.

    Linux's ``VmHWM`` starts afresh in an exec'd process; ``ru_maxrss`` (the fallback
    elsewhere) would carry the parent's high-water mark over on Linux.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "peak RSS, VmHWM of /proc/self/status"
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    return peak, "peak RSS, resource.getrusage ru_maxrss"


def peak_memory(which: str, config: dict, batch_size: int, device: str) -> tuple[float, float, str]:
    """Run in a fresh process: (MiB before the first step, peak MiB over 3 steps, source)."""
    dev = torch.device(device)
    trainer = Trainer(which, UNetConfig.from_dict(config), batch_size, dev)
    if dev.type == "cuda":
        before = torch.cuda.memory_allocated(dev) / 2**20
        torch.cuda.reset_peak_memory_stats(dev)
        trainer.run(3)
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
        return before, peak, "torch.cuda.max_memory_allocated"
    before, _ = host_peak_mib()
    trainer.run(3)
    return (before, *host_peak_mib())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="mnist",
        help="architecture (default: %(default)s)",
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resolution (default: the preset's, 28 for mnist, 32 for cifar10)",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=None,
        help="image channels (default: the preset's, 1 for mnist, 3 for cifar10)",
    )
    p.add_argument("--ch", type=int, default=None, help="override the base width (multiple of 32)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (default: 5)")
    p.add_argument("--steps", type=int, default=5, help="steps per repetition (default: 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model (default: 3)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time our channels-last U-Net under torch.compile (training.compile)",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="also time our U-Net in both layouts under bf16 autocast (training.precision)",
    )
    args = p.parse_args(argv)
    for name in ("batch_size", "repeats", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    channels = preset.in_channels if args.channels is None else args.channels
    changes = {"in_channels": channels, "out_channels": channels}
    if args.image_size is not None:
        changes["image_size"] = args.image_size
    if args.ch is not None:
        changes["ch"] = args.ch
    try:
        config = dataclasses.replace(preset, **changes)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    device = torch.device(args.device)

    models = ("ours-cl-compiled", *MODELS) if args.compile else MODELS
    if args.bf16:
        models = ("ours-cl-bf16", "ours-bf16", *models)
    trainers = {which: Trainer(which, config, args.batch_size, device) for which in models}
    counts = {w: sum(p.numel() for p in t.model.parameters()) for w, t in trainers.items()}
    if abs(counts["ours"] / counts["diffusers"] - 1) > 0.05:
        raise SystemExit(f"parameter counts differ by more than 5%: {counts}")
    warm_up = {which: trainer.run(args.warmup) for which, trainer in trainers.items()}
    rates: dict[str, list[float]] = {w: [] for w in models}
    for r in range(args.repeats):
        for which in models if r % 2 == 0 else models[::-1]:
            seconds = trainers[which].run(args.steps)
            rates[which].append(args.batch_size * args.steps / seconds)
    ratios = {
        ours: [a / b for a, b in zip(rates[ours], rates["diffusers"], strict=True)]
        for ours in models[:-1]
    }

    size = f"{config.image_size}x{config.image_size}x{config.in_channels}"
    print(
        f"device {device} | preset {args.preset} (ch {config.ch}, ch_mult {config.ch_mult}, "
        f"attn {config.attn_resolutions}) | {size} | batch {args.batch_size} | "
        f"torch {torch.__version__} | threads {torch.get_num_threads()}"
    )
    print(f"parameters: ours {counts['ours']:,} | diffusers {counts['diffusers']:,}")
    print(
        f"timing: {args.repeats} repetitions x {args.steps} steps, alternating order, "
        f"after {args.warmup} warm-up steps each"
    )
    for which in models:
        r = rates[which]
        print(
            f"{which:>9} images/s: median {statistics.median(r):9.1f}  "
            f"(min {min(r):.1f}, max {max(r):.1f})"
        )
    for ours, paired in ratios.items():
        median = statistics.median(paired)
        print(f"ratio {ours}/diffusers (median of paired repetitions): {median:.3f}")
    if args.compile:
        print(f"torch.compile warm-up ({args.warmup} steps): {warm_up['ours-cl-compiled']:.1f} s")

    if not args.no_memory:
        del trainers
        mem = {}
        for which in MODELS:  # a new process each: a high-water mark cannot be reset
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                args_ = (which, config.to_dict(), args.batch_size, args.device)
                mem[which] = pool.submit(peak_memory, *args_).result()
        source = mem["ours"][2]
        print(f"peak memory over 3 steps, one fresh process per model ({source}):")
        for which, (before, peak, _) in mem.items():
            print(f"{which:>9}: {peak:8.1f} MiB peak ({before:.1f} MiB before the first step)")


if __name__ == "__main__":
    main()
