"""CPU inference options for the bundled U-Net's forward pass, side by side in one run.

Issue 9 asks which of these help a CPU sampler: ``torch.inference_mode`` instead of
``torch.no_grad``, channels-last memory layout, ``torch.jit.trace`` + ``torch.jit.freeze``
(oneDNN fusion of conv + bias + activation; ``optimize_for_inference``), ``torch.compile``,
and bf16 autocast (what ``--precision auto`` picks on a CPU with native bf16). Each setting
runs the same batch of 64 through the bundled model at t = 500; settings take turns after a
warm-up, and the median of ``--repeats`` is printed with its ratio to eager ``no_grad`` (the
sampler's default) and its largest difference from that baseline's output. One-off costs
(tracing, compilation) are printed apart.

    python benchmarks/cpu_inference.py [--repeats 7] [--threads 2] [--compile]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

import ddim
from ddim.precision import autocast, cpu_bf16_flags
from ddim.speed.prepared import ChannelsLast

Forward = Callable[[], torch.Tensor]


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, _ = ddim.load_pretrained("mnist")
    model.eval()
    x = torch.randn(args.batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t = torch.full((args.batch_size,), 500)
    cl_model = ChannelsLast(model)

    def eager(m: torch.nn.Module, guard: Callable[[], object], precision: str = "fp32") -> Forward:
        def run() -> torch.Tensor:
            with guard(), autocast(precision, "cpu"):
                return m(x, t).float()

        return run

    settings: dict[str, Forward] = {
        "eager, no_grad (default)": eager(model, torch.no_grad),
        "eager, inference_mode": eager(model, torch.inference_mode),
        "channels_last, no_grad": eager(cl_model, torch.no_grad),
        "channels_last, inference_mode": eager(cl_model, torch.inference_mode),
        "eager, bf16 autocast": eager(model, torch.no_grad, "bf16"),
        "channels_last, bf16 autocast": eager(cl_model, torch.no_grad, "bf16"),
    }
    one_off: dict[str, float] = {}
    for name, module in (("jit.freeze", model), ("jit.freeze, channels_last", cl_model)):
        start = time.perf_counter()
        with torch.no_grad():
            frozen = torch.jit.optimize_for_inference(torch.jit.trace(module, (x, t)).eval())
            frozen(x, t)
        one_off[name] = time.perf_counter() - start
        settings[name] = eager(frozen, torch.no_grad)
    if args.compile:
        compiled = torch.compile(cl_model)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(x, t)
        one_off["compile, channels_last"] = time.perf_counter() - start
        settings["compile, channels_last"] = eager(compiled, torch.no_grad)
        compiled_bf16 = torch.compile(ChannelsLast(model))
        start = time.perf_counter()
        with torch.no_grad(), autocast("bf16", "cpu"):
            compiled_bf16(x, t)
        one_off["compile, channels_last, bf16"] = time.perf_counter() - start
        settings["compile, channels_last, bf16"] = eager(compiled_bf16, torch.no_grad, "bf16")

    reference = settings["eager, no_grad (default)"]().detach()
    for fn in settings.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in settings}
    errors: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in settings.items():
            out, seconds = timed(fn)
            times[name].append(seconds)
            errors[name] = float((out - reference).abs().max())

    bf16 = ", ".join(cpu_bf16_flags()) or "none"
    cpu = platform.processor() or platform.machine()
    print(
        f"{cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads; native bf16: {bf16}"
    )
    print(f"bundled U-Net forward, batch {args.batch_size}, median of {args.repeats}")
    print("| setting | ms | × default | max abs diff | one-off s |")
    print("|---|---:|---:|---:|---:|")
    base = statistics.median(times["eager, no_grad (default)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        extra = f"{one_off[name]:.1f}" if name in one_off else ""
        print(f"| {name} | {1000 * med:.0f} | {base / med:.2f} | {errors[name]:.1e} | {extra} |")


if __name__ == "__main__":
    main()
