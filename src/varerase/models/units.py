"""Per-unit quantities of token logits, shared by methods and evaluation.

Shapes: bitwise logits ``[B, L, d, 2]`` with targets ``[B, L, d]`` (0/1); index logits
``[B, L, V]`` with targets ``[B, L]``. A *unit* is a bit (bitwise) or a token (index); per-unit
results are ``[B, L, U]`` (``U = d``, or 1 for index tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def as_units(logits: torch.Tensor) -> torch.Tensor:
    """Index logits ``[B, L, V]`` → ``[B, L, 1, V]``; bitwise logits unchanged (``[B, L, d, 2]``)."""
    return logits if logits.ndim == 4 else logits.unsqueeze(2)


def flatten_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """Token maps of every scale → targets ``[B, L, d]`` (bitwise) or ``[B, L]`` (index)."""
    return torch.cat([m.flatten(1, 2) for m in maps], dim=1)


def per_unit_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every unit: ``[B, L, U]``."""
    units = as_units(logits).float()
    target_units = targets if targets.ndim == 3 else targets.unsqueeze(2)
    return F.cross_entropy(units.flatten(0, 2), target_units.flatten().long(), reduction="none").view(target_units.shape)


def per_unit_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) ‖ softmax(student))`` per unit (summed over classes): ``[B, L, U]``."""
    log_q = F.log_softmax(as_units(teacher_logits).float(), dim=-1)
    log_p = F.log_softmax(as_units(student_logits).float(), dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def per_unit_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of every unit's distribution: ``[B, L, U]``."""
    log_p = F.log_softmax(as_units(logits).float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)
