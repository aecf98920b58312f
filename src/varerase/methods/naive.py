"""Naive fine-tuning (METHODS.md §6): gradient ascent on the model's own generations — the collapse baseline.

The frozen model generates ``r^u`` for every target prompt ``c_u``; training *raises* the
teacher-forced cross-entropy ``CE(logits_θ(c_u, r^u), r^u)``. Nothing says what the model should
produce instead, so the distribution flattens wherever the loss can push it: this is the
baseline that shows erasure without a target or preservation collapses generation.
"""

from __future__ import annotations

import torch

from varerase.methods.losses import flatten_maps, naive_ascent_loss
from varerase.methods.vare import AuxiliaryTokenEraser
from varerase.training.trainer import UpdateFn


class OwnGenerationEraser(AuxiliaryTokenEraser):
    """Methods trained on the frozen model's own generations ``r^u`` for the *target* prompts (naive, ESD).

    The same cache as §1's auxiliary tokens (same sampler and seeds), asked for targets, not anchors.
    """

    def aux_requests(self) -> list[tuple[str, int]]:
        """Every ``(target prompt, seed)`` whose generation training uses."""
        return self.seeded_requests([p.target for p in self.pairs])

    def generations(self, index: int) -> tuple[list[int], list[str], list[torch.Tensor]]:
        """Step ``index``'s request indices, their target prompts and maps ``[B, h, w, d]`` per scale."""
        chosen = self.sample_indices(index, len(self.requests))
        maps, _ = self.cache.batch([self.requests[i] for i in chosen])
        return chosen, [self.requests[i][0] for i in chosen], maps


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
