"""Real images to measure generated ones against: the built-in world draws the truth of any caption.

FID/KID of a model's images against real images of the same captions is the world's analogue of
the papers' FID against COCO-30k: it measures how far the images are from what the prompts
describe, where FID against the original model's images measures only how far they moved.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from varerase.data.world_rendering import WorldConfig, render_prompts


@dataclass(frozen=True)
class GroundTruth:
    """Where real images come from and which prompt groups are measured against them.

    ``render(prompts, seeds, size)`` → float ``[B, 3, size, size]`` in [0, 1], one real image per
    ``(prompt, seed)`` row; ``source`` says what it is in the result file.
    """

    render: Callable[[Sequence[str], Sequence[int], int], torch.Tensor]
    groups: tuple[str, ...]
    source: str


def _render_world(world: WorldConfig, prompts: Sequence[str], seeds: Sequence[int], size: int) -> torch.Tensor:
    return render_prompts(prompts, seeds, dataclasses.replace(world, image_size=size))


def world_ground_truth(groups: Sequence[str] = ("retain", "anchor"), world: WorldConfig | None = None) -> GroundTruth:
    """The renders of each caption in ``world`` (default: the default world; the model's own for a
    ``train-tiny`` folder), the object placed from the row's seed, for ``groups``: by default the
    preservation groups, never the target prompts, where a change is the goal."""
    source = "world renders of the same captions (varerase.data.world_rendering.render_prompts, placement from the row seed)"
    return GroundTruth(functools.partial(_render_world, world or WorldConfig()), tuple(groups), source)
