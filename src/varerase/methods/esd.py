"""ESD-logit (METHODS.md §6): ESD's negative guidance, moved from noise predictions to logits.

Context maps ``r^u`` are the frozen model's own generations for the target prompts (sampled with
the auxiliary-token sampler, §1). On them the frozen model's *raw* (unguided) teacher-forced logits
give the target ``z* = z(∅) − η·(z(c_u) − z(∅))`` at every position, computed once in
:meth:`ESD.prepare` and kept in memory; training minimises ``KL(softmax(z*) ‖ p_θ(·|c_u, r^u))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from varerase.methods.base import OwnGenerationEraser
from varerase.methods.config import MethodConfig
from varerase.methods.losses import esd_loss, esd_target
from varerase.training.trainer import UpdateFn


@dataclass
class ESDConfig(MethodConfig):
    eta: float = 1.0  # negative-guidance strength η


class ESD(OwnGenerationEraser):
    """KL toward the negatively guided frozen logits on the target prompt's own generations."""

    name = "esd"
    config_class = ESDConfig

    @torch.no_grad()
    def prepare(self) -> None:
        """Fill the generation cache, then compute ``z*`` ``[N, L, d, 2]`` (one row per request)."""
        super().prepare()
        targets = []
        for start in range(0, len(self.requests), self.config.batch_size):
            chunk = self.requests[start : start + self.config.batch_size]
            maps, _ = self.cache.batch(chunk)
            cond = self.encode([prompt for prompt, _ in chunk])
            z_target = self.model.teacher_forced_logits(cond, maps).float()
            z_null = self.model.teacher_forced_logits(self.model.null_condition(cond), maps).float()
            targets.append(esd_target(z_null, z_target, self.config.eta))
            self.count_teacher_forced(2 * len(chunk))
        self.target_logits = torch.cat(targets)

    def step(self, index: int, update: UpdateFn) -> dict[str, float]:
        chosen, prompts, maps = self.generations(index)
        logits = self.edited.teacher_forced_logits(self.encode(prompts), maps)
        self.count_teacher_forced(len(prompts))
        loss = esd_loss(self.target_logits[chosen], logits)
        update(loss)
        return {"esd": loss.item()}
