"""``python -m ddim.train CONFIG [--set key=value ...] [--resume]``: ``ddim train`` itself.

Runs the same under ``torchrun --nproc_per_node=K -m ddim.train ...``. The options, the
messages and the exit statuses are those of ``ddim train`` (``python -m ddim.train --help``):
0 when training completed; 130 when SIGINT or SIGTERM stopped it after writing a checkpoint
(rerun with ``--resume`` to continue); 2 on a bad config or data set, a damaged checkpoint,
or a non-finite loss (the last checkpoint is left intact).
"""

from __future__ import annotations

import sys

from ddim.train.command import train_command


def main(argv: list[str] | None = None) -> int:
    """Run ``ddim train`` with ``argv`` (default: the command line); return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    try:
        train_command.main(args, prog_name="ddim train")
    except SystemExit as done:
        return int(done.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
