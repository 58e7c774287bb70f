"""Where ``ddim`` keeps what it computes once per machine: reference statistics, speed
measurements and torch.compile's kernels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$DDIM_CACHE``, else ``$XDG_CACHE_HOME/ddim``, else ``~/.cache/ddim``."""
    if os.environ.get("DDIM_CACHE"):
        return Path(os.environ["DDIM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ddim"
