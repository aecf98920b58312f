"""What an attack reports: its prompts, which of them brought the concept back, the attack
success rate, and the files it writes.

ASR (METHODS.md §7) is the fraction of attack prompts whose generation shows the concept: each
attack prompt (or optimised condition) is generated once, with the configured seed, and the
detector decides whether the concept is in the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from varerase.imaging import save_grid
from varerase.io import atomic_write_json


@dataclass
class AttackResult:
    """What an attack found and how often it worked.

    ``prompts``: the attack prompts (for the soft-prompt attack: the prompts its optimised
    features started from). ``detected[i]``: whether prompt ``i``'s generation shows the concept;
    ``scores[i]``: the detector's score for it. ``asr = mean(detected)``. ``settings``: attack,
    concept, resolved config, detector, sampler, model fingerprint and per-prompt search details.
    ``images``: ``[N, 3, H, W]`` in [0, 1] on the CPU, or None.
    """

    prompts: list[str]
    detected: list[bool]
    asr: float
    settings: dict[str, Any]
    images: torch.Tensor | None = None
    scores: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Everything but the images, as JSON-ready data."""
        rows = [{"prompt": p, "detected": d, "score": s} for p, d, s in zip(self.prompts, self.detected, self.scores)]
        return {"asr": self.asr, "num_prompts": len(self.prompts), "prompts": rows, "settings": self.settings}


def attack_success_rate(detected: Sequence[bool]) -> float:
    """Fraction of attack prompts whose generation shows the concept (METHODS.md §7)."""
    if len(detected) == 0:
        raise ValueError("no attack prompts: the attack success rate of an empty set is undefined")
    return sum(bool(d) for d in detected) / len(detected)


def save_attack(result: AttackResult, out_dir: str | Path) -> Path:
    """Write ``attack.json`` and, with images, ``attack_images.png`` (one tile per prompt, in order) atomically."""
    out_dir = Path(out_dir)
    if result.images is not None:
        save_grid(result.images, out_dir / "attack_images.png", columns=min(8, len(result.images)))
    return atomic_write_json(result.to_json(), out_dir / "attack.json")
