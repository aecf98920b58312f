"""The losses of METHODS.md, as plain functions of logits and targets.

Shapes: bitwise logits ``[B, L, d, 2]`` with targets ``[B, L, d]`` (0/1); index logits
``[B, L, V]`` with targets ``[B, L]``. A *unit* is a bit (bitwise) or a token (index). Per-unit
quantities come back as ``[B, L, U]`` (``U = d``, or 1 for index tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from varerase.models.units import as_units, flatten_maps, per_unit_cross_entropy, per_unit_entropy, per_unit_kl

__all__ = ["flatten_maps", "per_unit_cross_entropy", "per_unit_entropy", "per_unit_kl"]  # re-exported for methods

LN2 = math.log(2.0)


def vare_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """VARE (§2, the paper's Eq. 7): ``mean_batch (1/L) Σ_l mean_units ‖p_θ − p_0‖²``, a squared distance of probabilities.

    ``student_logits`` (``p_θ``) and ``teacher_logits`` (``p_0``, detached here) have the same shape,
    ``[B, L, d, 2]`` or ``[B, L, V]``. ``‖·‖²`` sums over a unit's classes: a bit whose ``P(1)`` is ``p``
    for the student and ``q`` for the teacher gives ``(p − q)² + ((1 − p) − (1 − q))² = 2(p − q)²``;
    an index token gives ``Σ_v (p_v − q_v)²`` over its ``V`` codes.
    """
    p = F.softmax(as_units(student_logits).float(), dim=-1)
    q = F.softmax(as_units(teacher_logits).detach().float(), dim=-1)
    return (p - q).square().sum(-1).mean()


def vare_ce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """VARE's ``loss=ce`` option (§2): ``mean_batch (1/L) Σ_l mean_units CE`` — teacher-forced CE toward the anchor's sampled tokens."""
    return per_unit_cross_entropy(logits, targets).mean()


def filtered_token_mask(logits: torch.Tensor, targets: torch.Tensor, rho: float = 0.25) -> torch.Tensor:
    """S-VARE's token mask ``m_l`` (§3): ``[B, L]`` bool.

    Bitwise: a bit is wrong when its CE exceeds ln 2 (the anchor's bit gets < 0.5); a token is
    kept when at least a fraction ``rho`` of its bits are wrong. Index: kept when the argmax
    differs from the anchor's token.
    """
    with torch.no_grad():
        if logits.ndim == 4:
            wrong_bits = per_unit_cross_entropy(logits, targets) > LN2
            return wrong_bits.float().mean(-1) >= rho
        return logits.argmax(-1) != targets


def filtered_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, rho: float = 0.25) -> torch.Tensor:
    """S-VARE's filtered CE (§3): ``mean_batch (1/L) Σ_l m_l · mean_units CE`` — divided by all ``L``."""
    mask = filtered_token_mask(logits, targets, rho)
    per_token = per_unit_cross_entropy(logits, targets).mean(-1)
    return (per_token * mask).sum(1).div(per_token.shape[1]).mean()


def svare_preservation(teacher_logits: torch.Tensor, student_logits: torch.Tensor, weight: float = 0.5) -> torch.Tensor:
    """S-VARE's preservation (§3): ``λ · mean_batch (1/L) Σ_l mean_entries q (log q − log p)``.

    The inner mean runs over all logit entries of a token (``2d`` for bitwise, ``V`` for index),
    so for bits it is half the mean per-bit KL — the reference code's convention.
    """
    log_q = F.log_softmax(as_units(teacher_logits).float(), dim=-1)
    log_p = F.log_softmax(as_units(student_logits).float(), dim=-1)
    entries = log_q.exp() * (log_q - log_p)
    return weight * entries.mean(dim=(-2, -1)).mean()


def guided(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, cfg: float) -> torch.Tensor:
    """``z_γ = γ·z(c) + (1−γ)·z(∅)``."""
    return cfg * cond_logits + (1 - cfg) * uncond_logits


def sace_erasure_target(z_anchor: torch.Tensor, z_target: torch.Tensor, eta: float = 0.0) -> torch.Tensor:
    """SACE's scale-0 target logits (§4): ``z_γ(c_a) − η·(z_γ(c_u) − z_γ(c_a))`` (softmax taken by the loss)."""
    return z_anchor - eta * (z_target - z_anchor)


def sace_erasure_loss(
    target_logits: torch.Tensor,
    student_logits: torch.Tensor,
    original_logits: torch.Tensor,
    beta: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SACE's entropy-regularised erasure (§4) on the confined positions' logits ``[B, P, …]`` (``P = 1``: scale 0).

    ``KL(t ‖ p_θ) + β · relu(H(p_θ) − H(p_0))``; KL and entropies are per unit, averaged over a
    position's units; the hinge is taken per position, then everything is averaged over the
    positions and the batch. Returns the loss and its two parts (detached).
    """
    kl = per_unit_kl(target_logits, student_logits).mean(dim=2)
    entropy_rise = per_unit_entropy(student_logits).mean(dim=2) - per_unit_entropy(original_logits).mean(dim=2).detach()
    hinge = F.relu(entropy_rise)
    loss = (kl + beta * hinge).mean()
    return loss, {"kl": kl.mean().detach(), "entropy_hinge": hinge.mean().detach()}


def sace_restoration_loss(original_logits: torch.Tensor, student_logits: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """SACE's restorative preservation (§4): ``λ_R · KL(p_0 ‖ p_θ)`` per unit, averaged."""
    return weight * per_unit_kl(original_logits.detach(), student_logits).mean()


def esd_target(z_null: torch.Tensor, z_target: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """ESD-logit target (§6): ``z(∅) − η·(z(c_u) − z(∅))``."""
    return z_null - eta * (z_target - z_null)


def esd_loss(target_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """ESD-logit (§6): ``KL(softmax(z*) ‖ p_θ)`` per unit, averaged over all positions."""
    return per_unit_kl(target_logits.detach(), student_logits).mean()


def naive_ascent_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Naive fine-tuning (§6): gradient *ascent* on CE of the model's own tokens (minimise ``−CE``)."""
    return -per_unit_cross_entropy(logits, targets).mean()
