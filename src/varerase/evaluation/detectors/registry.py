"""Detector names → loaders."""

from __future__ import annotations

import difflib
from pathlib import Path

from varerase.errors import ConfigError
from varerase.evaluation.detectors.base import check_threshold
from varerase.evaluation.detectors.world_detector import WorldDetector
from varerase.models.registry import TINY_WEIGHTS


def load_world_detector(path: str | Path | None = None) -> WorldDetector:
    """The built-in world's detector: shipped with the tiny model, or from ``path``."""
    path = Path(path) if path is not None else TINY_WEIGHTS / "detector.safetensors"
    if not path.exists():
        raise ConfigError(f"no world detector at {path}; reinstall varerase or run `varerase train-tiny`")
    return WorldDetector.load(path)


DETECTORS = ("world", "nudenet", "clip")


def check_detector(name: object, threshold: object = None) -> None:
    """Refuse an unknown detector name, or a threshold outside [0, 1], before any model loads."""
    if name not in DETECTORS:
        near = difflib.get_close_matches(str(name), DETECTORS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"unknown detector {name!r}; {hint}known: {', '.join(DETECTORS)}")
    if threshold is not None:
        check_threshold(threshold)


def load_detector(name: str, concepts: list[str] | None = None, clip_model: str | None = None, threshold: float | None = None):
    """A detector by name: ``world`` (built in), ``nudenet`` (extra ``varerase[nudity]``), ``clip`` (needs ``clip_model``)."""
    check_detector(name, threshold)
    if name == "world":
        detector = load_world_detector()
    elif name == "nudenet":
        from varerase.evaluation.detectors.nudenet_detector import NudeNetDetector

        detector = NudeNetDetector()
    elif name == "clip":
        from varerase.evaluation.detectors.clip_detector import ClipZeroShotDetector

        if not clip_model or not concepts:
            raise ConfigError("the clip detector needs --clip-model (hub id or folder) and at least one --concept")
        detector = ClipZeroShotDetector.from_pretrained(clip_model, concepts)
    if threshold is not None:
        detector.threshold = check_threshold(threshold)
    return detector
