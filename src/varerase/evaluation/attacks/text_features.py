"""Pooled text features: what the prompt searches (Ring-A-Bell, UnlearnDiff) compare prompts by.

A prompt's pooled feature is the mean of its real tokens' features from the attacked model's own
text encoder (whatever encoder the model has).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from varerase.models.base import ScaleWiseModel, TextCondition

# Prompts → encoded condition; ``ScaleWiseModel.encode_text`` has this type.
Encode = Callable[[list[str]], TextCondition]


def pooled_features(cond: TextCondition) -> torch.Tensor:
    """Mean of the real tokens' features: ``[B, T, C]`` → ``[B, C]``."""
    mask = cond.mask.unsqueeze(-1).to(cond.features.dtype)
    return (cond.features * mask).sum(1) / mask.sum(1)


def pooled_embeddings(model: ScaleWiseModel, prompts: Sequence[str], chunk: int = 256) -> torch.Tensor:
    """Pooled text features of many prompts, encoded ``chunk`` at a time and not cached: ``[N, C]``."""
    return torch.cat([pooled_features(model.encode_text(prompts[i : i + chunk], cache=False)) for i in range(0, len(prompts), chunk)])
