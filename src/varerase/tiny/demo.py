"""``varerase demo``: erase one concept from the built-in model and show what changed.

Before and after the erasure the demo generates images for prompts that name the concept
(targets) and for prompts that do not (others), with fixed seeds, and reports the concept's
presence on the targets and prompt-following on the others, as judged by the world detector.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from varerase.data.concepts import world_concept_prompts
from varerase.evaluation.detectors.registry import load_world_detector
from varerase.evaluation.metrics import attribute_hits, concept_presence, prompt_following
from varerase.imaging import save_grid
from varerase.io import atomic_write_json
from varerase.methods.registry import has_preset, method_config
from varerase.methods.runner import run_erasure
from varerase.models.base import ScaleWiseModel
from varerase.models.registry import load_model


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
    presence = concept_presence(detector.detect(target_images))[concept]
    following = prompt_following(attribute_hits(detector, other_images, others))["accuracy"]
    return ErasureMeasures(target_images, other_images, presence, following)


def run_demo(concept: str = "circle", method: str = "s-vare", out: str | Path = "runs/demo", steps: int | None = None, progress: bool = True) -> DemoResult:
    """Erase ``concept`` from the tiny model with ``method`` and measure before/after (see module docstring)."""
    started = time.perf_counter()
    out = Path(out)
    model = load_model("tiny")
    detector = load_world_detector()
    prompts = world_concept_prompts([concept])
    targets = [p.target for p in prompts.pairs]
    others = list(prompts.retain[:: max(1, len(prompts.retain) // 48)])
    before = measure_world_erasure(model, concept, targets, others, detector)

    config = method_config(method, preset="tiny" if has_preset(method, "tiny") else None, overrides={"steps": steps})
    result = run_erasure(model, method, prompts.pairs, config, prompts.retain, run_dir=out / "run", resume=(out / "run").exists(), progress=progress)
    after = measure_world_erasure(result.model, concept, targets, others, detector)

    shown = 8
    grid = save_grid(
        torch.cat([before.target_images[:shown], after.target_images[:shown], before.other_images[:shown], after.other_images[:shown]]),
        out / "before_after.png", columns=shown, scale=4,
        row_labels=["targets, before", "targets, after", "others, before", "others, after"],
    )
    demo = DemoResult(
        concept, method,
        before.presence, after.presence, before.following, after.following, time.perf_counter() - started, grid,
    )
    atomic_write_json(vars(demo), out / "demo.json")
    return demo
