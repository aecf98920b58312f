"""Detector names → loaders."""

from __future__ import annotations

from pathlib import Path

from varerase.errors import ConfigError
from varerase.evaluation.detectors.world_detector import WorldDetector
from varerase.models.registry import TINY_WEIGHTS


def load_world_detector(path: str | Path | None = None) -> WorldDetector:
    """The built-in world's detector: shipped with the tiny model, or from ``path``."""
    path = Path(path) if path is not None else TINY_WEIGHTS / "detector.safetensors"
    if not path.exists():
        raise ConfigError(f"no world detector at {path}; reinstall varerase or run `varerase train-tiny`")
    return WorldDetector.load(path)
