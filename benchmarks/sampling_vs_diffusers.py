"""End-to-end sampling speed of ``ddim.sample`` against diffusers' ``DDIMPipeline``, and the
quality of both outputs, on the same weights (the bundled model, converted with our own
converter).

Timings are side by side in one run: the settings take turns, after a warm-up, and each
prints the median of ``--repeats`` batches of 64 images at S = 50, eta = 0, with its ratio
to the pipeline at diffusers' defaults. ``--compile`` adds torch.compile; its one-off cost
is printed apart and left out of the ratio. Then ``-n`` images from the pipeline and from
our fastest setting are scored with FD-MNIST against held-out MNIST images, so a speed win
cannot hide a quality loss.

    python benchmarks/sampling_vs_diffusers.py \
        --ref-data ../shared/data/mnist/t10k-images-idx3-ubyte.gz \
        [--repeats 5] [--threads 2] [-n 500] [--compile] [--bf16]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

import ddim
from ddim.eval import metrics
from ddim.formats.archives import load_mnist
from ddim.formats.diffusers import import_diffusers, to_diffusers_unet
from ddim.formats.diffusers_folder import scheduler_config
from ddim.models.fast import for_inference
from ddim.noise import seeded_latents
from ddim.precision import choose

STEPS, BATCH = 50, 64


def pipeline(
    model: torch.nn.Module, sched: ddim.NoiseSchedule
) -> Callable[[int, int], torch.Tensor]:
    """``run(n, seed)``: ``n`` images in ``[-1, 1]`` from a ``DDIMPipeline`` at its defaults."""
    diffusers = import_diffusers()
    scheduler = diffusers.DDIMScheduler(**scheduler_config(sched))
    pipe = diffusers.DDIMPipeline(unet=to_diffusers_unet(model), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def run(n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        out = pipe(batch_size=n, generator=g, eta=0.0, num_inference_steps=STEPS, output_type="np")
        return torch.from_numpy(out.images).permute(0, 3, 1, 2) * 2 - 1

    return run


def ours(model, sched: ddim.NoiseSchedule, precision: str) -> Callable[[int, int], torch.Tensor]:
    """``run(n, seed)``: ``n`` DDIM samples, sample ``i`` from seed ``seed + i``."""

    def run(n: int, seed: int) -> torch.Tensor:
        x_T, _ = seeded_latents(range(seed, seed + n), (1, 28, 28))
        return ddim.sample(model, x_T, sched, steps=STEPS, precision=precision)

    return run


def median_times(runs: dict[str, Callable[[int, int], torch.Tensor]], repeats: int) -> dict:
    """The median seconds of one batch for each setting, the settings taking turns."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(BATCH, 0)  # warm-up (and, compiled, the compilation)
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(BATCH, 0)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def fd(run: Callable[[int, int], torch.Tensor], n: int, ref: metrics.FeatureStats) -> float:
    features = metrics.feature_extractor("mnist")
    batches = (features(run(min(BATCH, n - a), 1000 + a)) for a in range(0, n, BATCH))
    return metrics.FeatureStats.of_batches(batches).frechet_distance(ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-data", required=True, help="MNIST t10k-images-idx3-ubyte.gz")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("-n", type=int, default=500, help="images per FD-MNIST score")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, sched = ddim.load_pretrained("mnist")
    auto, why = choose("auto", "cpu")
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads, torch "
        f"{torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"precision auto -> {auto} ({why})")

    runs = {
        "DDIMPipeline (diffusers defaults)": pipeline(model, sched),
        "ddim.sample fp32": ours(model, sched, "fp32"),
        "ddim.sample fp32 channels_last": ours(
            for_inference(model, channels_last=True), sched, "fp32"
        ),
        f"ddim.sample auto ({auto})": ours(model, sched, "auto"),
    }
    if args.bf16:
        runs["ddim.sample bf16"] = ours(model, sched, "bf16")
    compiled = None
    if args.compile:
        compiled = for_inference(model, channels_last=True, compile=True)
        runs["ddim.sample channels_last + compile"] = ours(compiled, sched, "fp32")
    times = median_times(runs, args.repeats)
    base = times["DDIMPipeline (diffusers defaults)"]
    print(f"\nbatch {BATCH}, S = {STEPS}, eta = 0; median of {args.repeats}")
    for name, seconds in times.items():
        print(f"  {name:40s} {seconds:7.2f} s   speed-up x{base / seconds:5.2f}")
    if compiled is not None:
        print(f"  compilation, once per process: {compiled.seconds:.1f} s (not in the times)")

    fastest = min((k for k in runs if k.startswith("ddim.sample")), key=times.__getitem__)
    held_out = load_mnist(args.ref_data)[9000:10000]
    ref = metrics.dataset_stats(metrics.feature_extractor("mnist"), held_out)
    print(f"\nFD-MNIST of n = {args.n} against held-out images 9000..9999:")
    for name in ("DDIMPipeline (diffusers defaults)", fastest):
        print(f"  {name:40s} {fd(runs[name], args.n, ref):7.2f}")


if __name__ == "__main__":
    main()
