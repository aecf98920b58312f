"""Method names → :class:`Eraser` classes and presets."""

from __future__ import annotations

import difflib
from typing import Any, Callable

from varerase.config import read_yaml_settings
from varerase.errors import ConfigError
from varerase.methods.base import Eraser, MethodConfig
from varerase.methods.esd import ESD
from varerase.methods.naive import NaiveFineTuning
from varerase.methods.sace import SACE
from varerase.methods.svare import SVARE, svare_reference_preset
from varerase.methods.uce import UCE
from varerase.methods.vare import VARE

ERASERS: dict[str, type[Eraser]] = {cls.name: cls for cls in (VARE, SVARE, SACE, ESD, NaiveFineTuning, UCE)}
PRESETS: dict[tuple[str, str], Callable[[], MethodConfig]] = {("s-vare", "reference"): svare_reference_preset}


def eraser_class(name: str) -> type[Eraser]:
    """The method called ``name``; an unknown name suggests the nearest."""
    if name not in ERASERS:
        near = difflib.get_close_matches(name, ERASERS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"unknown method {name!r}; {hint}known: {', '.join(sorted(ERASERS))}")
    return ERASERS[name]


def method_config(name: str, preset: str | None = None, overrides: dict[str, Any] | None = None, config_file: str | None = None) -> MethodConfig:
    """The config of method ``name``: defaults (or ``preset``), then a YAML ``config_file``, then ``overrides`` (None values ignored)."""
    cls = eraser_class(name)
    if preset in (None, "default"):
        base = cls.config_class()
    elif (name, preset) in PRESETS:
        base = PRESETS[(name, preset)]()
    else:
        known = ["default"] + [p for (m, p) in PRESETS if m == name]
        raise ConfigError(f"method {name!r} has no preset {preset!r}; known: {', '.join(known)}")
    values = {k: v for k, v in vars(base).items()}
    if config_file is not None:
        values.update(read_yaml_settings(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cls.config_class.from_dict(values, source=config_file or f"{name} settings")
