"""Typed configs from untrusted dicts and YAML files: a bad value is a ConfigError naming it."""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import inspect
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from varerase.errors import ConfigError

T = TypeVar("T")

MAX_SEED = 2**64 - 1  # torch's generators take seeds in [0, 2**64)
MAX_MESSAGE = 2000  # characters of an error message shown before it is cut
# Images or prompt pairs in one batch (per step, per generation pass), and images per prompt: beyond
# it no device of today holds a batch of these models, and a typo (100000) would fail only in allocation.
MAX_BATCH_SIZE = 1024


class SettingsLoader(yaml.SafeLoader):
    """``yaml.safe_load`` for settings people write: ``1e-4`` is a float (YAML 1.2; 1.1 reads a string), and
    aliases (``*name``) are refused — a few hundred bytes of them expand to gigabytes (an "alias bomb")."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed in settings; write the value out")
        return super().compose_node(parent, index)


# YAML 1.2's floats that PyYAML's 1.1 resolver reads as strings: an exponent without a dot or a sign (1e-4, 1.5e3).
SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def load_settings_yaml(text: str) -> Any:
    """Plain data from YAML ``text`` read by :class:`SettingsLoader` (never objects, no aliases)."""
    loader = SettingsLoader(text)  # what yaml.safe_load does, with this loader
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parser's error as one line: what was wrong and where (PyYAML's own spans several lines)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {error.problem or error.context}"
    return " ".join(str(error).split())


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (error messages stay one readable line)."""
    return clip(repr(value), limit)


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
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name}: {short_repr(value)} fits none of {expected}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {list(args)}, got {short_repr(value)}")
        return value
    if origin in (list, tuple, typing.Sequence) or expected in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {short_repr(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name} must have {len(args)} values, got {short_repr(value)}")
            return tuple(_check(f"{name}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        checked = [_check(f"{name}[{i}]", inner, v) for i, v in enumerate(value)]
        return tuple(checked) if origin is tuple else checked
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {short_repr(value)}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {short_repr(value)}")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {short_repr(value)}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{name} must be a finite number, got an integer of {len(str(value))} digits") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
        return value
    if expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {short_repr(value)}")
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
        raise ConfigError(f"{source}: {clip(str(error))}") from error


def read_yaml_settings(path: str | Path) -> dict[str, Any]:
    """A YAML file of settings (:func:`load_settings_yaml`: plain data only, never objects, no aliases)."""
    path = Path(path)
    try:
        data = load_settings_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"could not read settings from {path}: {yaml_problem(error)}") from error
    except (OSError, UnicodeDecodeError) as error:
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
            settings[key.strip()] = load_settings_yaml(text) if text.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {short_repr(item)}: {yaml_problem(error)}") from error
    return settings


def check_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an integer within ``[minimum, maximum]``, else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {short_repr(value)}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = f"≥ {minimum}" if maximum is None else f"≤ {maximum}" if minimum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"{name} must be {bounds}, got {clip(str(value), 40)}")
    return value


def check_number(value: Any, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
    """``value`` as a float if it is a finite number within ``[minimum, maximum]``, else a ConfigError naming ``name``."""
    value = _check(name, float, value)
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = f"≥ {minimum}" if maximum is None else f"≤ {maximum}" if minimum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"{name} must be {bounds}, got {value}")
    return value


def check_seed(value: Any, name: str = "seed", count: int = 1) -> int:
    """A seed (``count`` of them from ``value`` on: ``value … value + count − 1``) that torch's generators take: in [0, 2**64)."""
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_SEED - max(0, count - 1):
        span = f" (and the {count - 1} after it)" if count > 1 else ""
        raise ConfigError(f"{name} {clip(str(value), 40)}{span} must be in [0, 2**64); pick another")
    return check_int(value, name)


def check_device(device: Any) -> str:
    """``device`` if torch can place tensors there (``cpu``, ``cuda``, ``cuda:1``, ``mps`` …), else a ConfigError saying why not."""
    import torch

    if not isinstance(device, (str, torch.device)):
        raise ConfigError(f"device must be a string such as 'cpu' or 'cuda', got {short_repr(device)}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device {str(device)!r}: {why}; use --device cpu (or install a CUDA build of PyTorch)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible (cuda:0 …)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {str(device)!r}: MPS is not available here; use --device cpu")
    elif parsed.type not in ("cpu", "meta"):
        try:
            torch.empty(0, device=parsed)
        except (RuntimeError, AssertionError):
            raise ConfigError(f"device {str(device)!r} is not available in this PyTorch; use cpu, cuda, cuda:N or mps") from None
    return str(device)


def _describe(expected: Any) -> str:
    """What an annotation accepts, in words: ``str | Path | None`` → ``a string, a path or None``."""
    origin, args = get_origin(expected), get_args(expected)
    if origin in (Union, types.UnionType):
        words = list(dict.fromkeys(_describe(a) for a in args))
        return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else words[0]
    if origin in (list, tuple, typing.Sequence, collections.abc.Sequence) or expected in (list, tuple):
        inner = args[0] if args else Any
        return "a list" if inner is Any else f"a list of {_describe(inner).removeprefix('a ').removeprefix('an ')}s"
    if origin in (dict, typing.Mapping, collections.abc.Mapping) or expected is dict:
        return "a mapping"
    names = {str: "a string", int: "an integer", float: "a number", bool: "True or False", Path: "a path", type(None): "None"}
    return names.get(expected, f"a {getattr(expected, '__name__', expected)}")


def _argument(expected: Any, value: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits annotation ``expected`` of a public function, and the value to pass on.

    Conversions: a string where a list of strings is expected is one item (``"circle"`` →
    ``["circle"]``, never its characters); a list or tuple where a list is expected becomes a list;
    a class with an ``of`` classmethod converts what it accepts (``PromptPair.of(("a", "b"))``).
    Types this does not know pass unchecked.
    """
    origin, args = get_origin(expected), get_args(expected)
    if expected is Any or isinstance(expected, (str, TypeVar)):
        return True, value
    if origin in (Union, types.UnionType):
        for option in args:
            ok, converted = _argument(option, value)
            if ok:
                return True, converted
        return False, value
    if expected is type(None):
        return value is None, value
    if origin in (list, tuple, typing.Sequence, collections.abc.Sequence) or expected in (list, tuple):
        inner = args[0] if args else Any
        if isinstance(value, str) and inner is str:
            return True, [value]
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, collections.abc.Sequence)):
            return False, value
        items = []
        for item in value:
            ok, converted = _argument(inner, item)
            if not ok:
                return False, value
            items.append(converted)
        return True, tuple(items) if origin is tuple else items
    if origin in (dict, typing.Mapping, collections.abc.Mapping) or expected is dict:
        return isinstance(value, collections.abc.Mapping), value
    if expected is bool:
        return isinstance(value, bool), value
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if expected is Path:
        return isinstance(value, (str, os.PathLike)), value
    if isinstance(expected, type):
        if isinstance(value, expected):
            return True, value
        of = getattr(expected, "of", None)
        if callable(of):
            try:
                return True, of(value)
            except (TypeError, ValueError):
                return False, value
        return False, value
    return True, value


def checked_arguments(function: Callable[..., T]) -> Callable[..., T]:
    """Check a public function's arguments against its annotations: an unknown keyword, a missing or
    ill-typed argument is a ConfigError naming it (the command line's one-line errors), not a TypeError."""
    signature = inspect.signature(function)
    hints: dict[str, Any] = {}

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        name = f"{function.__name__}()"
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            known = [p.name for p in signature.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
            unknown = [k for k in kwargs if k not in signature.parameters]
            if unknown and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
                near = difflib.get_close_matches(unknown[0], known, n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise ConfigError(f"{name} got an unknown argument {unknown[0]!r}; {hint}it takes {', '.join(known)}") from None
            raise ConfigError(f"{name}: {error}; it takes {', '.join(known)} (all but the first by keyword)") from None
        if not hints:
            hints.update(get_type_hints(function))
        for key, value in list(bound.arguments.items()):
            parameter = signature.parameters[key]
            if key not in hints or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                continue
            ok, converted = _argument(hints[key], value)
            if not ok:
                raise ConfigError(f"{name}: {key} must be {_describe(hints[key])}, got {short_repr(value)}")
            bound.arguments[key] = converted
        return function(*bound.args, **bound.kwargs)

    return wrapper
