"""What the white-box attacks (UnlearnDiff, soft prompt) share: the original model's concept
tokens, and the attacked model's likelihood of them.

For a target prompt ``c_u`` the frozen original model ``p_0`` generates maps ``r`` (the concept
as the unedited model draws it, seed ``config.seed``). An attack then looks for a condition ``c``
that makes the attacked model ``p_θ`` likely to produce the same maps: it minimises the
teacher-forced cross-entropy ``NLL(c) = mean_units CE(logits_θ(c, r), r)`` — i.e. maximises
the log-likelihood of the concept's tokens. The conditional branch is used (no CFG), as in
teacher-forced training. The final image is generated from ``c`` with the same seed.
"""

from __future__ import annotations

from typing import Sequence

import torch

from varerase.edits.edited_model import EditedModel
from varerase.models.base import SamplerConfig, ScaleWiseModel, TextCondition
from varerase.models.units import flatten_maps, per_unit_cross_entropy


def original_model(model: ScaleWiseModel) -> ScaleWiseModel:
    """The frozen original ``p_0`` of an edited model (its base); an unedited model is its own original."""
    return model.base if isinstance(model, EditedModel) else model


def concept_tokens(model: ScaleWiseModel, cond: TextCondition, sampler: SamplerConfig, seed: int) -> list[torch.Tensor]:
    """Maps the original of ``model`` generates for ``cond`` (every row with ``seed``): one tensor per scale, ``[B, h_k, w_k, …]``."""
    with torch.no_grad():
        return original_model(model).generate(cond, sampler, seed=[seed] * cond.batch_size, decode=False).maps


def token_nll(model: ScaleWiseModel, cond: TextCondition, maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Teacher-forced cross-entropy of ``maps`` under ``cond``, averaged over positions and units: ``[B]``.

    ``maps`` with batch 1 are broadcast to the batch of ``cond``. Differentiable in ``cond.features``.
    """
    maps = [m.expand(cond.batch_size, *m.shape[1:]) for m in maps]
    logits = model.teacher_forced_logits(cond, maps)
    return per_unit_cross_entropy(logits, flatten_maps(maps)).mean(dim=(1, 2))
