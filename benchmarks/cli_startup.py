"""How long ``ddim`` takes to answer ``--help`` and usage errors, and what it imports.

Each case runs as a fresh ``python -c`` subprocess calling ``ddim.cli.main`` (as the ``ddim``
entry point does); the median wall time of ``--repeats`` runs is printed with the heavy
modules (torch, scipy, matplotlib) the run left in ``sys.modules``. Target: ``ddim --help``
under 1 s, importing none of them.

    python benchmarks/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "scipy", "matplotlib")

CASES = {
    "ddim --help": ["--help"],
    "ddim sample --help": ["sample", "--help"],
    "ddim sample --steps 0": ["sample", "--steps", "0"],
}

RUN_MAIN = f"""
import sys
from ddim.cli import main
try:
    main(sys.argv[1:], prog_name="ddim")
except SystemExit:
    pass
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""


def run_once(args: list[str]) -> tuple[float, str]:
    """Wall seconds of one run of ``ddim ARGS`` and the heavy modules it imported."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", RUN_MAIN, *args], capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - start
    return seconds, out.stdout.splitlines()[-1] if out.stdout.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per case (median)")
    args = parser.parse_args()
    for name, argv in CASES.items():
        runs = [run_once(argv) for _ in range(args.repeats)]
        seconds = statistics.median(s for s, _ in runs)
        imported = runs[-1][1] or "none"
        print(f"{name:<24} {seconds:6.3f} s   heavy imports: {imported}")


if __name__ == "__main__":
    main()
