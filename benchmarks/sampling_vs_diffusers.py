"""End-to-end sampling speed of ``ddim.sample`` against diffusers' ``DDIMPipeline`` at equal
precision, the bound the hardware puts on any speed-up, and the quality of both outputs, on
the same weights (the bundled model, converted with our own converter).

For each precision (fp32, and bf16 autocast where ``--precision auto`` picks it or
``--bf16`` asks): the pipeline, and ours eager, eager in channels-last, and (``--compile``)
torch.compile in channels-last for batches of exactly 64. Every setting runs in a process
of its own, because compiled kernels slow the eager calls of the process that ran them
(by 5-10 % here); the processes take turns for ``--repeats`` rounds, each timing one batch
of 64 images at S = 50, eta = 0 after a warm-up batch (which holds the compilation: the
first compiling process finds the kernel cache cold, the later ones warm). Printed: the
median per setting and its ratio to the pipeline at the same precision.

The bound: the U-Net's convolutions are counted in FLOPs and a large matrix product is
timed in each precision; no setting can run a forward pass faster than its convolution
FLOPs at that rate, so ``pipeline time / that`` bounds the speed-up at equal arithmetic.
Then ``-n`` images from the pipeline, from ours eager and from ours compiled (fp32) are
scored with FD-MNIST against held-out MNIST images, so a speed win cannot hide a quality
loss.

    python benchmarks/sampling_vs_diffusers.py \
        --ref-data ../shared/data/mnist/t10k-images-idx3-ubyte.gz \
        [--repeats 3] [--threads 2] [-n 500] [--compile] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import ddim
from ddim.eval import metrics
from ddim.formats.archives import load_mnist
from ddim.formats.diffusers import import_diffusers, to_diffusers_unet
from ddim.formats.diffusers_folder import scheduler_config
from ddim.noise import seeded_latents
from ddim.precision import autocast, choose, cpu_bf16_flags
from ddim.speed.choice import cpu_name
from ddim.speed.prepared import for_inference

STEPS, BATCH = 50, 64
Run = Callable[[int, int], torch.Tensor]


def pipeline(model: torch.nn.Module, sched: ddim.NoiseSchedule, precision: str) -> Run:
    """``run(n, seed)``: ``n`` images in ``[-1, 1]`` from a ``DDIMPipeline`` at its defaults,
    under ``precision``'s autocast."""
    diffusers = import_diffusers()
    scheduler = diffusers.DDIMScheduler(**scheduler_config(sched))
    pipe = diffusers.DDIMPipeline(unet=to_diffusers_unet(model), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def run(n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        with autocast(precision, "cpu"):
            out = pipe(batch_size=n, generator=g, eta=0.0, num_inference_steps=STEPS,
                       output_type="np")  # fmt: skip
        return torch.from_numpy(out.images).permute(0, 3, 1, 2) * 2 - 1

    return run


def ours(model, sched: ddim.NoiseSchedule, precision: str) -> Run:
    """``run(n, seed)``: ``n`` DDIM samples, sample ``i`` from seed ``seed + i``."""

    def run(n: int, seed: int) -> torch.Tensor:
        x_T, _ = seeded_latents(range(seed, seed + n), (1, 28, 28))
        return ddim.sample(model, x_T, sched, steps=STEPS, precision=precision)

    return run


def prepared(kind: str, precision: str) -> Run:
    """The run of one setting: ``pipeline``, ``eager``, ``channels-last`` or ``compile``."""
    model, sched = ddim.load_pretrained("mnist")
    if kind == "pipeline":
        return pipeline(model, sched, precision)
    fast = {"eager": {}, "channels-last": {"channels_last": True},
            "compile": {"channels_last": True, "compile": True, "rows": BATCH}}[kind]  # fmt: skip
    return ours(for_inference(model, **fast) if fast else model, sched, precision)


def child(kind: str, precision: str) -> None:
    """Warm up (compile) with one batch, time one more; print both as JSON."""
    run = prepared(kind, precision)
    warm = _seconds(lambda: run(BATCH, 0))
    print(json.dumps({"warm_up": warm, "seconds": _seconds(lambda: run(BATCH, 0))}))


def median_times(settings: list[tuple[str, str]], repeats: int, threads: int) -> dict:
    """``{(kind, precision): (median seconds, warm-up seconds of each round)}``, each setting
    in a fresh process, the processes taking turns round by round; one new kernel cache."""
    times: dict[tuple[str, str], list[float]] = {s: [] for s in settings}
    warm: dict[tuple[str, str], list[float]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": str(threads)}
        for _ in range(repeats):
            for kind, precision in settings:
                cmd = [sys.executable, __file__, "--child", kind, "--precision", precision,
                       "--ref-data", "-"]  # fmt: skip
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                times[(kind, precision)].append(r["seconds"])
                warm[(kind, precision)].append(r["warm_up"])
    return {s: (statistics.median(times[s]), warm[s]) for s in settings}


def conv_flops(model: torch.nn.Module) -> float:
    """Floating-point operations of one forward pass of a batch of 64 (convolutions and
    matrix products, as torch's flop counter counts them)."""
    x, t = torch.zeros(BATCH, 1, 28, 28), torch.full((BATCH,), 500)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    return float(counter.get_total_flops())


def matmul_rate(dtype: torch.dtype) -> float:
    """FLOP/s of a 2048 x 2048 matrix product in ``dtype``, the best of 5."""
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(5))
    return 2 * 2048**3 / best


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fd(run: Run, n: int, ref: metrics.FeatureStats) -> float:
    features = metrics.feature_extractor("mnist")
    batches = (features(run(min(BATCH, n - a), 1000 + a)) for a in range(0, n, BATCH))
    return metrics.FeatureStats.of_batches(batches).frechet_distance(ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-data", required=True, help="MNIST t10k-images-idx3-ubyte.gz")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("-n", type=int, default=500, help="images per FD-MNIST score")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--bf16", action="store_true", help="time bf16 even if auto is fp32")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.precision)
        return
    auto, why = choose("auto", "cpu")
    bf16 = ", ".join(cpu_bf16_flags()) or "none"
    print(f"{cpu_name()} ({platform.machine()}), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {bf16}; "
          f"{args.threads} threads, torch {torch.__version__}")  # fmt: skip
    print(f"precision auto -> {auto} ({why})")
    precisions = ["fp32", *(["bf16"] if auto == "bf16" or args.bf16 else [])]
    kinds = ["pipeline", "eager", "channels-last", *(["compile"] if args.compile else [])]
    settings = [(kind, p) for p in precisions for kind in kinds]
    times = median_times(settings, args.repeats, args.threads)

    print(f"\nbatch {BATCH}, S = {STEPS}, eta = 0; median of {args.repeats} rounds, one "
          "process per setting and round")  # fmt: skip
    print("| setting | s | x DDIMPipeline at the same precision | warm-up batch, by round |")
    print("|---|---:|---:|---|")
    for (kind, p), (seconds, warm) in times.items():
        name = "DDIMPipeline" if kind == "pipeline" else f"ddim.sample, {kind}"
        ratio = times[("pipeline", p)][0] / seconds
        rounds = ", ".join(f"{w:.1f}" for w in warm)
        print(f"| {name}, {p} | {seconds:.2f} | {ratio:.2f} | {rounds} |")

    model, sched = ddim.load_pretrained("mnist")
    flops = conv_flops(model)
    print(f"\nconvolutions and matrix products: {flops / 1e9:.1f} GFLOP a forward of {BATCH}")
    for p in precisions:
        rate = matmul_rate(torch.float32 if p == "fp32" else torch.bfloat16)
        floor = STEPS * flops / rate
        base = times[("pipeline", p)][0]
        print(f"{p}: a 2048^2 matmul runs at {rate / 1e9:.0f} GFLOP/s, so {STEPS} forwards "
              f"take at least {floor:.2f} s: no setting beats the pipeline by more than "
              f"x{base / floor:.2f}")  # fmt: skip

    held_out = load_mnist(args.ref_data)[9000:10000]
    ref = metrics.dataset_stats(metrics.feature_extractor("mnist"), held_out)
    print(f"\nFD-MNIST of n = {args.n} against held-out images 9000..9999 (fp32):")
    for kind in kinds:
        if kind != "channels-last":
            print(f"  {kind:10s} {fd(prepared(kind, 'fp32'), args.n, ref):7.2f}")


if __name__ == "__main__":
    main()
