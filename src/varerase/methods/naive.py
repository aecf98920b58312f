"""Naive fine-tuning (METHODS.md §6): gradient ascent on the model's own generations — the collapse baseline.

The frozen model generates ``r^u`` for every target prompt ``c_u``; training *raises* the
teacher-forced cross-entropy ``CE(logits_θ(c_u, r^u), r^u)``. Nothing says what the model should
produce instead, so the distribution flattens wherever the loss can push it: this is the
baseline that shows erasure without a target or preservation collapses generation.
"""

from __future__ import annotations

from varerase.methods.base import OwnGenerationEraser
from varerase.methods.losses import flatten_maps, naive_ascent_loss
from varerase.training.trainer import UpdateFn


class NaiveFineTuning(OwnGenerationEraser):
    """One optimiser step per iteration on ``−CE(logits_θ(c_u, r^u), r^u)`` (see module docstring)."""

    name = "naive"

    def step(self, index: int, update: UpdateFn) -> dict[str, float]:
        _, prompts, maps = self.generations(index)
        logits = self.edited.teacher_forced_logits(self.encode(prompts), maps)
        self.count_teacher_forced(len(prompts))
        loss = naive_ascent_loss(logits, flatten_maps(maps))
        update(loss)
        return {"ce": -loss.item()}  # the CE being raised, so the log reads as it grows
