"""Method names → registered methods: each method's :class:`Eraser` class (and so its config class) and its presets."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping

from varerase.config import read_yaml_settings
from varerase.errors import ConfigError
from varerase.methods.base import Eraser
from varerase.methods.config import MethodConfig
from varerase.methods.esd import ESD
from varerase.methods.naive import NaiveFineTuning
from varerase.methods.sace import SACE
from varerase.methods.svare import REFERENCE_PRESET, SVARE
from varerase.methods.uce import UCE
from varerase.methods.vare import VARE


@dataclass(frozen=True)
class RegisteredMethod:
    """A method as the registry knows it: its eraser class and its presets (name → flat settings over the defaults)."""

    eraser: type[Eraser]
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.eraser.name

    @property
    def config_class(self) -> type[MethodConfig]:
        return self.eraser.config_class

    def config(self, preset: str | None = None, overrides: Mapping[str, Any] | None = None, config_file: str | None = None) -> MethodConfig:
        """The settings tree of a run: defaults (or ``preset``), then a YAML ``config_file``, then ``overrides`` (None values ignored), built once.

        Each layer may be flat (``lr: 1e-3``) or nested (``training: {lr: 1e-3}``); see :mod:`varerase.methods.config`.
        """
        if preset not in (None, "default") and preset not in self.presets:
            raise ConfigError(f"method {self.name!r} has no preset {preset!r}; known: {', '.join(['default', *self.presets])}")
        layers: list[tuple[Any, str]] = [(self.presets[preset], f"{self.name} {preset} preset")] if preset in self.presets else []
        if config_file is not None:
            layers.append((read_yaml_settings(config_file), config_file))
        layers.append(({k: v for k, v in (overrides or {}).items() if v is not None}, f"{self.name} settings"))
        return self.config_class.from_settings(*layers, source=config_file or f"{self.name} settings")


# Settings tuned on the built-in tiny model (benchmarks/erasure.py; numbers in README): its
# 1.4M-parameter transformer takes a larger learning rate than Infinity-2B, and its tokens have
# 12 bits, so S-VARE's filter keeps a token with one wrong bit (ρ = 1/12; the reference ρ = 0.25
# was set for 32-bit tokens and here would drop tokens that are still wrong).
_TINY_TRAINING = {"lr": 1e-3, "steps": 300, "batch_size": 4, "samples_per_pair": 3}
METHODS: dict[str, RegisteredMethod] = {
    m.name: m
    for m in (
        RegisteredMethod(VARE, {"tiny": _TINY_TRAINING}),
        RegisteredMethod(SVARE, {"reference": REFERENCE_PRESET, "tiny": {**_TINY_TRAINING, "rho": 1 / 12, "preservation_weight": 2.0}}),
        RegisteredMethod(SACE, {"tiny": {"lr": 3e-3, "steps": 300}}),
        RegisteredMethod(ESD, {"tiny": _TINY_TRAINING}),
        RegisteredMethod(NaiveFineTuning, {"tiny": _TINY_TRAINING}),
        RegisteredMethod(UCE),
    )
}


def registered_method(name: str) -> RegisteredMethod:
    """The method called ``name``; an unknown name suggests the nearest."""
    if name not in METHODS:
        near = difflib.get_close_matches(name, METHODS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"unknown method {name!r}; {hint}known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def has_preset(name: str, preset: str) -> bool:
    """Whether method ``name`` has preset ``preset``."""
    return name in METHODS and preset in METHODS[name].presets


def eraser_class(name: str) -> type[Eraser]:
    """The eraser class of method ``name`` (see :func:`registered_method`)."""
    return registered_method(name).eraser


def method_config(name: str, preset: str | None = None, overrides: dict[str, Any] | None = None, config_file: str | None = None) -> MethodConfig:
    """The config of method ``name``: defaults (or ``preset``), then a YAML ``config_file``, then ``overrides`` (None values ignored)."""
    return registered_method(name).config(preset, overrides, config_file)


def preset_for(name: str, model: object, preset: str | None) -> str | None:
    """The preset a run of method ``name`` on ``model`` uses: ``preset`` when given, else ``tiny`` for
    the built-in model where the method has settings tuned for it (the one place this rule lives)."""
    if preset is None and model == "tiny" and has_preset(name, "tiny"):
        return "tiny"
    return preset


# Methods the benchmark runs under "all" besides every registered method with its own settings:
# the CE form of VARE (S-VARE without its filter and preservation) beside the paper's MSE form, and
# SACE confined to the scales ISSA finds (scales=auto) beside the paper's scale 0.
BENCHMARK_VARIANTS: tuple[str, ...] = ("vare[loss=ce]", "sace[scales=auto]")


@dataclass(frozen=True)
class MethodVariant:
    """A method with settings of its own, written ``METHOD[KEY=VALUE,…]`` (e.g. ``vare[loss=ce]``): a benchmark row."""

    label: str
    method: str
    settings: dict[str, Any]

    @property
    def folder(self) -> str:
        """A folder name for the variant's run (``vare[loss=ce]`` → ``vare_loss-ce``)."""
        return self.method + "".join(f"_{k}-{v}" for k, v in self.settings.items())


def method_variant(spec: str) -> MethodVariant:
    """Parse ``METHOD`` or ``METHOD[KEY=VALUE,…]``; an unknown method or a malformed spec is a ConfigError."""
    from varerase.config import parse_assignments

    spec = spec.strip()
    name, bracket, rest = spec.partition("[")
    if bracket and not rest.endswith("]"):
        raise ConfigError(f"method {spec!r}: write METHOD or METHOD[KEY=VALUE,...], e.g. vare[loss=ce]")
    registered_method(name)
    settings = parse_assignments([a for a in rest[:-1].split(",") if a.strip()]) if bracket else {}
    return MethodVariant(spec, name, settings)
