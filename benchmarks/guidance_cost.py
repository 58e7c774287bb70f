"""What a guided sampling step costs against an unguided one, on the same batch.

The bundled class-conditional MNIST model (``mnist-cond``; ``--ckpt`` for another) samples
a batch of ``--batch-size`` images for ``--steps`` DDIM steps four ways, taking turns run
by run after a warm-up: unguided (the conditional model alone, one call of B rows a step),
classifier-free guidance (one batched call of 2B rows a step, eq. 1 of ``ddim.guidance``,
run as one forward pass, and as two passes of B rows: ``for_inference(model, rows=B)``, what
``ddim.speed.fastest`` and ``ddim sample`` pick where it measures faster),
and, with the bundled noisy classifier, classifier guidance on top of the unguided call
(one classifier forward and backward a step). Printed: the median seconds of each and
their ratios to unguided. The target of issue 24: CFG at most 2.05x.

    OMP_NUM_THREADS=2 python benchmarks/guidance_cost.py [--batch-size 64] [--steps 20]
                                                        [--repeats 5] [--precision fp32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ddim
from ddim.models.noisy_classifier import load_noisy_classifier
from ddim.speed.prepared import for_inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="mnist-cond")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, sched = ddim.load_pretrained(args.ckpt)
    classifier = load_noisy_classifier(sched=sched)
    b = args.batch_size
    x_T = torch.randn(b, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(b) % 10
    common = {"steps": args.steps, "precision": args.precision}
    pieces = for_inference(model, rows=b)

    runs = {
        "unguided (conditional, B rows)": (model, {"y": y}),
        "classifier-free guidance w = 3 (one call of 2B rows)": (model, {"y": y, "guidance": 3.0}),
        "classifier-free guidance w = 3 (the 2B rows in two passes of B)": (
            pieces,
            {"y": y, "guidance": 3.0},
        ),
        "classifier guidance s = 1 (+ classifier grad)": (
            model,
            {"y": y, "classifier": classifier},
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats + 1):
        for name, (net, extra) in runs.items():
            start = time.perf_counter()
            ddim.sample(net, x_T, sched, **common, **extra)
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["unguided (conditional, B rows)"])
    print(f"batch {b}, {args.steps} DDIM steps, {args.precision}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}:")  # fmt: skip
    print("| run | seconds | x unguided |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
