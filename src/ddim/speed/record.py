"""The speed measurements of :mod:`ddim.speed.choice`, kept per machine in
``speed.json`` under :func:`ddim.cache.cache_dir`: one entry per
:func:`ddim.speed.choice.key`, written whole to a temporary name and renamed."""

from __future__ import annotations

import json
from pathlib import Path

from ddim import cache
from ddim.formats.atomic import atomic_write_text
from ddim.speed.choice import Measured


def path() -> Path:
    """The record's file."""
    return cache.cache_dir() / "speed.json"


def _entries() -> dict[str, dict]:
    try:
        entries = json.loads(path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def load(key: str) -> Measured:
    """What was measured under ``key`` (nothing, for a new key or an unreadable record)."""
    entry = _entries().get(key)
    try:
        return Measured.from_dict(entry) if isinstance(entry, dict) else Measured()
    except (TypeError, ValueError):
        return Measured()


def save(key: str, measured: Measured) -> None:
    """Store ``measured`` under ``key``, keeping the other entries."""
    entries = _entries()
    entries[key] = measured.to_dict()
    path().parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path(), json.dumps(entries, indent=1, sort_keys=True) + "\n")
