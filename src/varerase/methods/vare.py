"""VARE (METHODS.md §2): teacher-forced CE under the target prompt toward the anchor's auxiliary tokens."""

from __future__ import annotations

from varerase.methods.base import AuxiliaryTokenEraser
from varerase.methods.losses import flatten_maps, vare_loss
from varerase.training.trainer import UpdateFn


class VARE(AuxiliaryTokenEraser):
    """One optimiser step per iteration on ``L_VARE``; no preservation term."""

    name = "vare"

    def step(self, index: int, update: UpdateFn) -> dict[str, float]:
        pairs, maps, _ = self.batch(index)
        logits = self.edited.teacher_forced_logits(self.encode([p.target for p in pairs]), maps)
        self.count_teacher_forced(len(pairs))
        loss = vare_loss(logits, flatten_maps(maps))
        update(loss)
        return {"vare": loss.item()}
