"""``ddim sample -n 1000`` with no speed flags against every fixed setting, wall time
including the one-off costs (start-up, measuring, compiling).

Three stories, each with its own new ddim cache (``DDIM_CACHE``: the speed record and the
compiled kernels), run one after the other:

- ``auto``: the same command three times, as a user repeating a job: the first run measures
  and decides, later runs use what the earlier ones recorded;
- ``eager``: ``--no-compile --no-channels-last``, twice;
- ``compile``: ``--compile --channels-last``, twice (the first compiles cold, the second
  loads the kernels the first left).

Each run's wall time and its ``speed:`` line are printed, then each auto run against the
fastest fixed setting at the same point of its story (run 1 against both first runs, later
runs against both second runs).

    python benchmarks/auto_speed.py [-n 1000] [--steps 50] [--precision auto]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

STORIES = {
    "auto": [],
    "eager": ["--no-compile", "--no-channels-last"],
    "compile": ["--compile", "--channels-last"],
}
RUNS = {"auto": 3, "eager": 2, "compile": 2}


def run(flags: list[str], cache: str, out: str, args: argparse.Namespace) -> tuple[float, str]:
    """Wall seconds of one ``ddim sample`` and its ``speed:`` line (if any)."""
    cmd = [
        sys.executable, "-m", "ddim.cli", "sample", "-n", str(args.n), "--steps",
        str(args.steps), "--precision", args.precision, "--out", out, "--force", *flags,
    ]  # fmt: skip
    env = {**os.environ, "DDIM_CACHE": cache}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    said = [line for line in done.stdout.splitlines() if line.startswith(("speed:", "torch."))]
    return seconds, "; ".join(said)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    print(f"ddim sample -n {args.n} --steps {args.steps} --precision {args.precision}")
    print("| story | run | wall s | said |\n|---|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        # One short run first, untimed, so that no story pays for reading torch from disk.
        warm_up = argparse.Namespace(n=1, steps=1, precision=args.precision)
        run(["--no-compile"], os.path.join(tmp, "warm-up"), os.path.join(tmp, "out.npz"), warm_up)
        for story, flags in STORIES.items():
            cache = os.path.join(tmp, story)
            times[story] = []
            for i in range(RUNS[story]):
                seconds, said = run(flags, cache, os.path.join(tmp, "out.npz"), args)
                times[story].append(seconds)
                print(f"| {story} | {i + 1} | {seconds:.1f} | {said} |", flush=True)
    print("\n| auto run | wall s | fastest fixed setting then | its s | auto / fastest |")
    print("|---:|---:|---|---:|---:|")
    for i, seconds in enumerate(times["auto"]):
        k = min(i, 1)
        best = min(("eager", "compile"), key=lambda s: times[s][k])
        ratio = seconds / times[best][k]
        print(f"| {i + 1} | {seconds:.1f} | {best} (run {k + 1}) | {times[best][k]:.1f} | "
              f"{ratio:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
