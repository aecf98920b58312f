"""The settings every attack has, and building an attack's config from YAML / CLI overrides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from varerase.config import dataclass_from_dict
from varerase.errors import ConfigError


@dataclass
class AttackConfig:
    """Settings every attack has.

    ``seed``: the sampling seed of every final generation (one image per attack prompt; each row
    has its own generator, so an image does not depend on its batch). ``batch_size``: prompts
    per ``generate`` call.
    """

    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {self.batch_size}")


@dataclass
class TargetPromptsConfig(AttackConfig):
    """Attacks that start from target prompts ``c_u`` (and their anchors ``c_a``).

    ``pairs_file``: prompt pairs (S-VARE or EAR format) whose targets show the concept; without
    it, a world concept uses :func:`~varerase.data.concepts.world_concept_prompts`.
    ``num_prompts``: how many pairs to attack, spread evenly over the list (0 = all).
    """

    pairs_file: str | None = None
    num_prompts: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_prompts < 0:
            raise ConfigError(f"num_prompts must be ≥ 0 (0 = all), got {self.num_prompts}")


def make_config(config_class: type[AttackConfig], config: AttackConfig | dict[str, Any] | None) -> AttackConfig:
    """A ``config_class`` from None (defaults), a dict (YAML / CLI overrides) or an instance."""
    if config is None:
        return config_class()
    if isinstance(config, config_class):
        return config
    if isinstance(config, dict):
        return dataclass_from_dict(config_class, config, config_class.__name__)
    raise ConfigError(f"expected a {config_class.__name__} or a dict of its settings, got {type(config).__name__}")
