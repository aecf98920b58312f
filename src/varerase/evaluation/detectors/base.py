"""The interface every concept detector offers to evaluation: images in, per-concept scores out."""

from __future__ import annotations

import abc
import hashlib
from typing import Sequence

import torch
from torch import nn

from varerase.config import check_number


class ConceptDetector(abc.ABC):
    """Scores how strongly each concept it knows is present in images.

    Subclasses set ``name`` and ``version`` and implement ``concepts``, ``scores`` and
    ``weights_hash``. A concept counts as present when its score is at least ``threshold``.
    """

    name: str = "detector"
    version: str = "0"
    threshold: float = 0.5

    @property
    @abc.abstractmethod
    def concepts(self) -> tuple[str, ...]:
        """The concept names ``scores`` returns."""

    @abc.abstractmethod
    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images``: float ``[B, 3, H, W]`` in [0, 1] → ``{concept: [B]}`` scores in [0, 1]."""

    @abc.abstractmethod
    def weights_hash(self) -> str:
        """A hash that changes whenever the detector's weights do (for result files)."""

    def detect(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{concept: bool [B]}``: whether each concept's score reaches ``threshold``."""
        return {concept: score >= self.threshold for concept, score in self.scores(images).items()}

    def attribute_hits(self, images: torch.Tensor, prompts: Sequence[str]) -> list[dict[str, bool]] | None:
        """Whether this detector can judge prompt following, and its judgement.

        Per image of ``images`` ``[B, 3, H, W]``, ``{kind: whether the image shows the value its
        prompt names}`` for the attribute kinds (e.g. shape, colour, background) that prompt
        names; None (the default) for a detector that cannot tell attributes from prompts.
        """
        return None

    def describe(self) -> dict:
        """What a result file records about the detector that produced its numbers."""
        return {
            "name": self.name,
            "version": self.version,
            "weights_sha256": self.weights_hash(),
            "threshold": self.threshold,
            "concepts": list(self.concepts),
        }


def check_threshold(value: object) -> float:
    """A detection threshold: a number in [0, 1] (scores lie in [0, 1]: above 1 nothing is ever present, below 0 everything)."""
    return check_number(value, "threshold", 0.0, 1.0)


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and values, in name order)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
