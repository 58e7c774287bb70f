"""Files shipped with the package: the bundled MNIST model and the FD-MNIST classifier."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def path(name: str) -> Path:
    """The installed path of the bundled file ``name`` (which may not exist)."""
    return Path(str(importlib.resources.files(__name__) / name))
