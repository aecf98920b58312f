"""VARE (METHODS.md §2): the student under the target prompt pulled toward the frozen model under the anchor prompt.

Both are teacher-forced on the anchor's auxiliary visual tokens ``r^a`` (§1). The default
``loss="mse"`` is the paper's objective (its Eq. 7), a squared difference of probabilities at
every one of the ``L`` positions::

    L_VARE = mean_batch (1/L) Σ_l mean_units ‖ p_θ(·|c_u, r^a_{<l}) − p_0(·|c_a, r^a_{<l}) ‖²

``loss="ce"`` is the teacher-forced CE toward the sampled anchor tokens ``r^a`` (S-VARE without
its filter and preservation), kept for comparison. One optimiser step per iteration; no
preservation term.

Decisions where §2 leaves room:

* ``p_0`` is the frozen base model's *conditional* distribution for the anchor (no CFG), not the
  CFG-combined ``z^a`` the teacher cache holds for S-VARE's preservation (§2: our choice).
* ``p_0`` is computed at every step, by one teacher-forced pass of the frozen base model on the
  batch's anchors without gradients, rather than stored for every auxiliary sample: a forward
  pass without backward per step, and memory that does not grow with the number of pairs. It is
  counted in ``forward_tokens``.
* ``‖·‖²`` sums over a unit's classes (``2(p − q)²`` for a bit whose ``P(1)`` is ``p`` for the
  student and ``q`` for the teacher; ``Σ_v`` over the ``V`` codes of an index token), then units,
  positions and the batch are averaged, as §2 writes it; both distributions are taken in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from varerase.methods.base import AuxiliaryTokenEraser
from varerase.methods.config import MethodConfig
from varerase.methods.losses import flatten_maps, vare_ce_loss, vare_mse_loss
from varerase.training.trainer import UpdateFn


@dataclass
class VAREConfig(MethodConfig):
    loss: Literal["mse", "ce"] = "mse"  # mse: the paper's Eq. 7; ce: CE toward the sampled anchor tokens


class VARE(AuxiliaryTokenEraser):
    """One optimiser step per iteration on ``L_VARE`` (the form ``config.loss`` names); no preservation term."""

    name = "vare"
    config_class = VAREConfig

    def step(self, index: int, update: UpdateFn) -> dict[str, float]:
        pairs, maps, _ = self.batch(index)
        logits = self.edited.teacher_forced_logits(self.encode([p.target for p in pairs]), maps)
        self.count_teacher_forced(len(pairs))
        if self.config.loss == "ce":
            loss = vare_ce_loss(logits, flatten_maps(maps))
        else:
            with torch.no_grad():
                teacher_logits = self.model.teacher_forced_logits(self.encode([p.anchor for p in pairs]), maps)
            self.count_teacher_forced(len(pairs))
            loss = vare_mse_loss(logits, teacher_logits)
        update(loss)
        return {"vare": loss.item()}
