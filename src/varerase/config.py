"""Typed configs from untrusted dicts and YAML files: a bad value is a ConfigError naming it."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from varerase.errors import ConfigError

T = TypeVar("T")


def _check(name: str, expected: Any, value: Any) -> Any:
    """``value`` converted to ``expected`` where that is lossless (int → float, list → tuple), else ConfigError."""
    origin, args = get_origin(expected), get_args(expected)
    if expected is Any:
        return value
    if dataclasses.is_dataclass(expected) and isinstance(expected, type):
        return value if isinstance(value, expected) else dataclass_from_dict(expected, value, name)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check(name, option, value)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name}: {value!r} fits none of {expected}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple, typing.Sequence) or expected in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name} must have {len(args)} values, got {value!r}")
            return tuple(_check(f"{name}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        checked = [_check(f"{name}[{i}]", inner, v) for i, v in enumerate(value)]
        return tuple(checked) if origin is tuple else checked
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    return value


def dataclass_from_dict(cls: type[T], values: Any, source: str = "config") -> T:
    """Build dataclass ``cls`` from ``values``: unknown keys and ill-typed values are ConfigErrors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source} must be a mapping of settings, got {type(values).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in values if k not in fields)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {unknown}; known: {sorted(fields)}")
    hints = get_type_hints(cls)
    checked = {k: _check(f"{source}: {k}", hints[k], v) for k, v in values.items()}
    try:
        return cls(**checked)
    except (TypeError, ValueError, OverflowError) as error:
        raise ConfigError(f"{source}: {error}") from error


def read_yaml_settings(path: str | Path) -> dict[str, Any]:
    """A YAML file of settings (``yaml.safe_load``: plain data only, never objects)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"could not read settings from {path}: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value lines)")
    return data


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``["population=128", "eta=0.5", "update=joint"]`` → settings; values are read as YAML scalars."""
    settings: dict[str, Any] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            settings[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {item!r}: {error}") from error
    return settings
