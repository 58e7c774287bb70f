"""What torch.compile costs a process that starts cold and one that starts from the kernel
cache a first process left behind.

Each variant runs in two fresh child processes, one after the other, sharing one new cache
folder (``TORCHINDUCTOR_CACHE_DIR``, which ``ddim.speed.prepared.compile_cache_dir``
points into the ddim cache): the bundled model is loaded and prepared as ``ddim sample
--compile`` prepares it (channels-last, compiled for a fixed batch), and the first call is
timed, which is the compilation or the cache's load. Variants: the default, and with
inductor's weight freezing (``torch._inductor.config.freezing``), an option for inference.

    python benchmarks/compile_start.py [--precision bf16] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(precision: str, batch: int, freezing: bool) -> None:
    """Load, prepare and call the model once; print the seconds as JSON."""
    start = time.perf_counter()
    import torch
    import torch._inductor.config

    import ddim
    from ddim.precision import autocast
    from ddim.speed.prepared import for_inference

    torch._inductor.config.freezing = freezing
    model, _ = ddim.load_pretrained("mnist")
    fast = for_inference(model, channels_last=True, compile=True, rows=batch)
    x, t = torch.randn(batch, 1, 28, 28), torch.full((batch,), 500)
    with torch.no_grad(), autocast(precision, "cpu"):
        fast(x, t)
        loaded = time.perf_counter()
        fast(x, t)
    print(json.dumps({"compile": fast.seconds, "to_first_output": loaded - start,
                      "call": time.perf_counter() - loaded}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--child", choices=["plain", "freezing"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.precision, args.batch_size, args.child == "freezing")
        return
    print(f"bundled model, batch {args.batch_size}, {args.precision}, channels-last; seconds")
    print("| variant | process | first call (compile) | start to first output | a call |")
    print("|---|---|---:|---:|---:|")
    for variant in ("plain", "freezing"):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            for which in ("first (cold cache)", "second (warm cache)"):
                cmd = [sys.executable, __file__, "--child", variant, "--precision",
                       args.precision, "--batch-size", str(args.batch_size)]  # fmt: skip
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {variant} | {which} | {r['compile']:.1f} | "
                      f"{r['to_first_output']:.1f} | {r['call']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
