"""Checks that config dataclasses share: integer fields and the keys of a dict to build from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any


def is_int(value: object) -> bool:
    """``value`` is an int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def dataclass_kwargs(cls: type, d: Mapping[str, Any], required: Iterable[str] = ()) -> dict:
    """``d`` as keyword arguments of the dataclass ``cls``; a ValueError naming unknown keys
    or missing ``required`` ones, or ``d`` that is not a mapping."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{cls.__name__} needs a mapping of its fields, got {d!r}")
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(map(str, unknown))}")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{cls.__name__} is missing required keys: {', '.join(missing)}")
    return dict(d)
