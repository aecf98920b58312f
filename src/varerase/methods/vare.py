"""VARE (METHODS.md §2): teacher-forced CE under the target prompt toward the anchor's auxiliary tokens."""

from __future__ import annotations

from varerase.methods.base import Eraser
from varerase.methods.losses import flatten_maps, vare_loss
from varerase.methods.teacher_cache import TeacherCache
from varerase.training.trainer import UpdateFn


class AuxiliaryTokenEraser(Eraser):
    """Shared by VARE and S-VARE: the anchors' auxiliary tokens, generated once by the frozen model."""

    def prepare(self) -> None:
        self.cache = TeacherCache(self.model, self.config.aux_sampler(), self.cache_dir)
        self.requests = self.aux_requests()
        self.cache.fill(self.requests, progress=self.progress)

    def batch(self, index: int):
        """Step ``index``'s pairs, their auxiliary maps ``[B, h, w, d]`` per scale and teacher logits ``z^a`` ``[B, L, d, 2]``."""
        chosen = self.sample_indices(index, len(self.requests))
        per_pair = self.config.samples_per_pair
        pairs = [self.pairs[i // per_pair] for i in chosen]
        maps, teacher_logits = self.cache.batch([self.requests[i] for i in chosen])
        return pairs, maps, teacher_logits


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
