"""What ``varerase demo`` measures and shows (the pipeline itself is :func:`varerase.api.demo`).

Before and after the erasure the demo generates images for prompts that name the concept
(targets) and for prompts that do not (others), with fixed seeds, and reports the concept's
presence on the targets and prompt-following on the others, as judged by the world detector.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from varerase.data.concepts import world_concept_prompts
from varerase.data.pairs import PromptPair
from varerase.evaluation.metrics import attribute_hits, presence_fractions, prompt_following
from varerase.imaging import save_grid
from varerase.models.base import ScaleWiseModel


@dataclass
class DemoResult:
    concept: str
    method: str
    presence_before: float
    presence_after: float
    following_before: float
    following_after: float
    seconds: float
    grid: Path


@dataclass
class ErasureMeasures:
    """Images and scores of one model on a concept's target prompts and on other prompts."""

    target_images: torch.Tensor
    other_images: torch.Tensor
    presence: float
    following: float


def measure_world_erasure(model: ScaleWiseModel, concept: str, targets: list[str], others: list[str], detector, seed: int = 0) -> ErasureMeasures:
    """The concept's presence on ``targets`` and prompt-following on ``others`` (fixed seeds per prompt)."""
    target_images = model.generate_images(targets, [seed + i for i in range(len(targets))])
    other_images = model.generate_images(others, [seed + 10_000 + i for i in range(len(others))])
    presence = presence_fractions(detector.detect(target_images))[concept]
    following = prompt_following(attribute_hits(detector, other_images, others))["accuracy"]
    return ErasureMeasures(target_images, other_images, presence, following)


def demo_prompts(concept: str) -> tuple[list[PromptPair], list[str], list[str], list[str]]:
    """The demo's prompts for ``concept``: erasure pairs, retain prompts, the target prompts it
    measures presence on, and the other prompts it measures following on (every ``len // 48``-th
    retain prompt: 60 of 120 for one world concept)."""
    prompts = world_concept_prompts([concept])
    targets = [p.target for p in prompts.pairs]
    others = list(prompts.retain[:: max(1, len(prompts.retain) // 48)])
    return list(prompts.pairs), list(prompts.retain), targets, others


def save_before_after(before: ErasureMeasures, after: ErasureMeasures, path: Path, shown: int = 8) -> Path:
    """The before/after grid: ``shown`` target and other images of each model, one labelled row each."""
    return save_grid(
        torch.cat([before.target_images[:shown], after.target_images[:shown], before.other_images[:shown], after.other_images[:shown]]),
        path, columns=shown, scale=4,
        row_labels=["targets, before", "targets, after", "others, before", "others, after"],
    )
