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
# Settings tuned on the built-in tiny model (benchmarks/erasure.py; numbers in README): its
# 1.4M-parameter transformer takes a larger learning rate than Infinity-2B, and its tokens have
# 12 bits, so S-VARE's filter keeps a token with one wrong bit (ρ = 1/12; the reference ρ = 0.25
# was set for 32-bit tokens and here would drop tokens that are still wrong).
_TINY_TRAINING = {"lr": 1e-3, "steps": 300, "batch_size": 4, "samples_per_pair": 3}
_TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "vare": _TINY_TRAINING,
    "s-vare": {**_TINY_TRAINING, "rho": 1 / 12, "preservation_weight": 2.0},
    "sace": {"lr": 3e-3, "steps": 300},
    "esd": _TINY_TRAINING,
    "naive": _TINY_TRAINING,
}


def _tiny_preset(name: str) -> Callable[[], MethodConfig]:
    return lambda: ERASERS[name].config_class.from_dict(_TINY_OVERRIDES[name], source=f"{name} tiny preset")


PRESETS: dict[tuple[str, str], Callable[[], MethodConfig]] = {
    ("s-vare", "reference"): svare_reference_preset,
    **{(name, "tiny"): _tiny_preset(name) for name in _TINY_OVERRIDES},
}


def has_preset(name: str, preset: str) -> bool:
    """Whether method ``name`` has preset ``preset``."""
    return (name, preset) in PRESETS


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
