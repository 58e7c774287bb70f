"""Typed configs from YAML: a file read with one clear error, and a section checked against
the dataclass it describes (unknown keys named, values coerced where lossless).

YAML reads ``1e-4`` (no dot) as a string, which a float field accepts, and lists become
tuples.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """The parsed content of the YAML config ``path``; a ValueError naming it if unreadable."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config {path} is not valid YAML: {e}") from None


def build_section(cls: type, values: Any, section: str, source: str) -> Any:
    """``cls(**values)`` for config section ``section`` of ``source``, every key checked and
    coerced to its field's type; a ValueError naming the key or the field otherwise."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {section!r} in {source} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"unknown config key '{section}.{key}' in {source}")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}", source)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ValueError(f"config section {section!r} in {source}: {e}") from None
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """``value`` as type ``hint`` where the conversion is lossless, else a ValueError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        for kind in kinds[:-1]:
            try:
                return _coerce(value, kind, key, source)
            except ValueError:
                continue
        try:
            return _coerce(value, kinds[-1], key, source)
        except ValueError:
            if len(kinds) == 1:
                raise
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"config key {key!r} in {source} must be {names}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} in {source} must be a list, got {value!r}")
        item = args[0]
        if len(args) != 2 or args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(
                    f"config key {key!r} in {source} needs {len(args)} values, got {len(value)}"
                )
            return tuple(_coerce(v, a, key, source) for v, a in zip(value, args, strict=True))
        return tuple(_coerce(v, item, key, source) for v in value)
    if hint is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    elif hint is int and not isinstance(value, bool):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, float) and number.is_integer():
            return int(number)
        if isinstance(number, int):
            return number
    elif hint is bool and isinstance(value, bool) or hint is str and isinstance(value, str):
        return value
    raise ValueError(f"config key {key!r} in {source} must be {hint.__name__}, got {value!r}")
