"""Detector names → loaders."""

from __future__ import annotations

import difflib
from pathlib import Path

from varerase.errors import ConfigError
from varerase.evaluation.detectors.base import check_threshold
from varerase.evaluation.detectors.world_detector import WorldDetector
from varerase.models.registry import TINY_WEIGHTS, model_folder


def load_world_detector(path: str | Path | None = None) -> WorldDetector:
    """The built-in world's detector: shipped with the tiny model, or from ``path``."""
    path = Path(path) if path is not None else TINY_WEIGHTS / "detector.safetensors"
    if not path.exists():
        raise ConfigError(f"no world detector at {path}; reinstall varerase or run `varerase train-tiny`")
    return WorldDetector.load(path)


def world_detector_path(model: object = "tiny") -> Path:
    """The world detector that judges ``model``: its folder's own ``detector.safetensors``
    (:func:`varerase.models.registry.model_folder`; a ``train-tiny`` folder's is trained on its
    world and tokenizer reconstructions), else the shipped one (the official models, models given
    as objects)."""
    folder = model_folder(model)
    if folder is not None and (folder / "detector.safetensors").is_file():
        return folder / "detector.safetensors"
    return TINY_WEIGHTS / "detector.safetensors"


DETECTORS = ("world", "nudenet", "clip")


def check_detector(name: object, threshold: object = None) -> None:
    """Refuse an unknown detector name, or a threshold outside [0, 1], before any model loads."""
    if name not in DETECTORS:
        near = difflib.get_close_matches(str(name), DETECTORS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"unknown detector {name!r}; {hint}known: {', '.join(DETECTORS)}")
    if threshold is not None:
        check_threshold(threshold)


def load_detector(
    name: str, concepts: list[str] | None = None, clip_model: str | None = None, threshold: float | None = None, model: object = "tiny"
):
    """A detector by name: ``world`` (built in; the one of :func:`world_detector_path` for ``model``,
    the model it is to judge), ``nudenet`` (extra ``varerase[nudity]``), ``clip`` (needs ``clip_model``)."""
    check_detector(name, threshold)
    if name == "world":
        detector = load_world_detector(world_detector_path(model))
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
