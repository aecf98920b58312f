"""S-VARE (METHODS.md §3): VARE's auxiliary tokens with a filtered CE and KL preservation.

Decisions where §3 leaves room: condition dropout (reference preset only) replaces a row's text
by the model's null condition with probability ``condition_dropout`` in both forward passes,
drawn from a generator seeded by the step (so resumed runs replay it). Drop-path is not applied
(the edited model runs in eval mode), a documented difference from the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from varerase.errors import ConfigError
from varerase.methods.base import AuxiliaryTokenEraser
from varerase.methods.config import MethodConfig
from varerase.methods.losses import filtered_cross_entropy, filtered_token_mask, flatten_maps, svare_preservation
from varerase.models.base import TextCondition
from varerase.training.trainer import UpdateFn, step_generator


@dataclass
class SVAREConfig(MethodConfig):
    rho: float = 0.25  # fraction of wrong bits that keeps a token in the filtered CE
    preservation_weight: float = 0.5  # λ
    update: Literal["two-step", "joint"] = "two-step"
    condition_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.update not in ("two-step", "joint"):
            raise ConfigError(f"update must be 'two-step' or 'joint', got {self.update!r}")
        if not 0.0 <= self.rho <= 1.0:
            raise ConfigError(f"rho must be in [0, 1], got {self.rho}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ConfigError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")


# The official S-VARE settings for Infinity-2B (METHODS.md §3), flat: its auxiliary tokens are
# sampled with gen_one_img's defaults (CFG 4, top-k 900, top-p 0.97, temperature 1), and it
# trains blocks cast to bfloat16 with no float32 master copy (update_precision bfloat16).
REFERENCE_PRESET: dict[str, Any] = {
    "steps": 500, "lr": 2.34e-5, "batch_size": 2, "seed": 42, "groups": ["cross_attn", "ffn"], "betas": (0.9, 0.97),
    "weight_decay": 0.005, "grad_clip": 5.0, "generation_cfg": 4.0, "top_k": 900, "top_p": 0.97, "aux_seed": 42,
    "condition_dropout": 0.1, "update_precision": "bfloat16",
}


class SVARE(AuxiliaryTokenEraser):
    """Filtered CE on the target prompt, then KL to the guided teacher on the anchor prompt."""

    name = "s-vare"
    config_class = SVAREConfig

    def _maybe_drop(self, cond: TextCondition, index: int, stream: int) -> TextCondition:
        rate = self.config.condition_dropout
        if rate == 0.0:
            return cond
        # Drawn for the global batch, then sliced: the ranks of a distributed run drop what one process would.
        drop = self.context.split_batch(torch.rand(self.config.batch_size, generator=step_generator(self.config.seed + stream, index)) < rate)
        if not drop.any():
            return cond
        null = self.model.null_condition(cond)
        features = torch.where(drop.to(cond.features.device)[:, None, None], null.features.to(cond.features.dtype), cond.features)
        return TextCondition(features, cond.mask)

    def step(self, index: int, update: UpdateFn) -> dict[str, float]:
        pairs, maps, teacher_logits = self.batch(index)
        targets = flatten_maps(maps)
        cond_target = self._maybe_drop(self.encode([p.target for p in pairs]), index, stream=1)
        cond_anchor = self._maybe_drop(self.encode([p.anchor for p in pairs]), index, stream=2)

        logits_target = self.edited.teacher_forced_logits(cond_target, maps)
        fce = filtered_cross_entropy(logits_target, targets, self.config.rho)
        kept = filtered_token_mask(logits_target, targets, self.config.rho).float().mean()
        if self.config.update == "two-step":
            update(fce)
        logits_anchor = self.edited.teacher_forced_logits(cond_anchor, maps)
        pre = svare_preservation(teacher_logits, logits_anchor, self.config.preservation_weight)
        update(pre if self.config.update == "two-step" else fce + pre)
        self.count_teacher_forced(2 * len(pairs))
        return {"fce": fce.item(), "pre": pre.item(), "kept": kept.item()}
