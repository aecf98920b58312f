"""SACE — scale-aware concept erasure (METHODS.md §4; varerase's specification of the paper's ideas).

The SACE paper publishes its ideas, not its formulas or code: this file is our specification of
its three components. Every loss looks at scale-0 logits only (one position per prompt), and the
edit is a scale-gated adapter (``EditedModel`` scope ``scale0``): the edited weights produce only
the first token map's distribution; all later scales, and the keys/values they attend to, come
from the original weights. ``context: adapted`` (§4's comparison option; the edit's
``start_context``) lets later scales attend to the start position as the edited weights compute
it; training is the same either way (every loss looks at scale 0 only), only what the edited
model generates differs.

Decisions where §4 leaves room:

* the CFG ``γ`` of the frozen target is ``generation_cfg`` (the sampling guidance);
* the entropy hinge is taken per prompt after averaging per-bit entropies over the prompt's bits;
* the benign set of the restorative loss is the anchors, the retain prompts and the null
  condition ``∅`` (with each target's token lengths): guidance at scale 0 combines the edited
  conditional and unconditional branches, so ``∅`` must stay put too;
* default trainable groups: cross-attention, FFN and the attentive text pool (the start token).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from varerase.edits.delta import EditConfig
from varerase.methods.base import Eraser
from varerase.methods.config import MethodConfig
from varerase.methods.losses import guided, sace_erasure_loss, sace_erasure_target, sace_restoration_loss
from varerase.models.base import TextCondition
from varerase.training.trainer import TrainerConfig, UpdateFn


@dataclass
class SACEConfig(MethodConfig):
    """SACE's settings; ``context`` is another name of ``edit.start_context`` (see module docstring)."""

    edit_scope = "scale0"
    aliases = {"context": "start_context"}

    training: TrainerConfig = field(default_factory=lambda: TrainerConfig(steps=150, lr=1e-3))
    edit: EditConfig = field(default_factory=lambda: EditConfig(groups=["cross_attn", "ffn", "start_token"], scope="scale0"))
    batch_size: int = 8
    eta: float = 0.0  # push away from the target: t = z(c_a) − η (z(c_u) − z(c_a))
    beta: float = 1.0  # entropy hinge weight
    restoration_weight: float = 1.0  # λ_R
    benign_batch_size: int = 8


class SACE(Eraser):
    """Scale-0 erasure with an entropy hinge and restorative preservation (see module docstring)."""

    name = "sace"
    config_class = SACEConfig

    @torch.no_grad()
    def _frozen_first_scale(self, cond: TextCondition) -> torch.Tensor:
        return self.model.first_scale_logits(cond).float()

    @torch.no_grad()
    def prepare(self) -> None:
        gamma = self.config.generation_cfg
        targets = [p.target for p in self.pairs]
        anchors = [p.anchor for p in self.pairs]
        cond_u, cond_a = self.encode(targets), self.encode(anchors)
        z_u = guided(self._frozen_first_scale(cond_u), self._frozen_first_scale(self.model.null_condition(cond_u)), gamma)
        z_a = guided(self._frozen_first_scale(cond_a), self._frozen_first_scale(self.model.null_condition(cond_a)), gamma)
        self.target_logits = sace_erasure_target(z_a, z_u, self.config.eta)
        self.original_target_logits = self._frozen_first_scale(cond_u)
        self.cond_targets = cond_u

        benign = list(dict.fromkeys(anchors + self.retain_prompts))
        cond_benign = TextCondition.cat([self.encode(benign), self.model.null_condition(cond_u)])
        self.cond_benign = cond_benign
        self.original_benign_logits = self._frozen_first_scale(cond_benign)
        self.count_first_scale(4 * len(targets) + cond_benign.batch_size)

    def step(self, index: int, update: UpdateFn) -> dict[str, float]:
        chosen = self.sample_indices(index, len(self.pairs))
        student = self.edited.first_scale_logits(self.cond_targets.select(chosen))
        erase, parts = sace_erasure_loss(self.target_logits[chosen], student, self.original_target_logits[chosen], self.config.beta)

        benign = self.sample_indices(index, self.cond_benign.batch_size, self.config.benign_batch_size, stream=1)
        student_benign = self.edited.first_scale_logits(self.cond_benign.select(benign))
        restore = sace_restoration_loss(self.original_benign_logits[benign], student_benign, self.config.restoration_weight)
        update(erase + restore)
        self.count_first_scale(len(chosen) + len(benign))
        return {"erase": erase.item(), "kl": parts["kl"].item(), "entropy_hinge": parts["entropy_hinge"].item(), "restore": restore.item()}
