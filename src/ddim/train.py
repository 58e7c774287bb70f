"""``python -m ddim.train CONFIG [--override key=value ...] [--resume]``.

Runs the same under ``torchrun --nproc_per_node=K -m ddim.train ...``.

Exit status: 0 when training completed; 130 when SIGINT or SIGTERM stopped it after
writing a checkpoint (rerun with ``--resume`` to continue); 2 on a bad config or data
set, a damaged checkpoint, or a non-finite loss (the last checkpoint is left intact).
"""

from __future__ import annotations

import argparse
import sys

from ddim.train_config import load_config
from ddim.training import NonFiniteLossError, train

EXIT_INTERRUPTED = 130
EXIT_FAILED = 2


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, train, and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m ddim.train", description="Train a DDPM/DDIM eps-model from a YAML config."
    )
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument(
        "--override",
        "-o",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. training.lr=1e-3 data.path=/data/mnist.gz",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in out_dir (starts fresh if there is none)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.override)
        result = train(config, resume=args.resume, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_INTERRUPTED if result.stopped_by else 0


if __name__ == "__main__":
    sys.exit(main())
