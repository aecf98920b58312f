"""Each loss of METHODS.md against a small example computed by hand."""

from __future__ import annotations

import math

import torch

from varerase.methods import losses


def _bit_logits(p_one: list[list[float]]) -> torch.Tensor:
    """Probabilities of bit = 1 per (token, bit) → logits [1, L, d, 2]."""
    p = torch.tensor(p_one)
    return torch.stack([torch.log(1 - p), torch.log(p)], dim=-1).unsqueeze(0)


def test_svare_mask_keeps_token_with_a_quarter_wrong_bits_and_drops_correct_ones():
    # Targets are all 1. Token 0: one of four bits gets p=0.4 (< 0.5, wrong); token 1: all right.
    logits = _bit_logits([[0.4, 0.9, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9]])
    targets = torch.ones(1, 2, 4, dtype=torch.long)
    assert losses.filtered_token_mask(logits, targets, rho=0.25).tolist() == [[True, False]]
    assert losses.filtered_token_mask(logits, targets, rho=0.5).tolist() == [[False, False]]


def test_svare_filtered_ce_divides_by_all_positions_not_kept_ones():
    logits = _bit_logits([[0.4, 0.9, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9]])
    targets = torch.ones(1, 2, 4, dtype=torch.long)
    token0 = (-math.log(0.4) - 3 * math.log(0.9)) / 4
    expected = token0 / 2  # L = 2, only token 0 kept
    assert math.isclose(losses.filtered_cross_entropy(logits, targets, rho=0.25).item(), expected, rel_tol=1e-6)


def test_bit_exactly_at_half_is_not_wrong():
    # CE = ln 2 exactly: "wrong" needs CE > ln 2.
    logits = torch.zeros(1, 1, 4, 2)
    targets = torch.ones(1, 1, 4, dtype=torch.long)
    assert not losses.filtered_token_mask(logits, targets, rho=0.25).any()


def test_index_token_mask_is_argmax_mismatch():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]])
    targets = torch.tensor([[0, 2]])
    assert losses.filtered_token_mask(logits, targets).tolist() == [[False, True]]


def test_svare_preservation_is_mean_over_2d_entries_half_the_bit_kl():
    q, p = 0.8, 0.6
    teacher, student = _bit_logits([[q]]), _bit_logits([[p]])
    kl_bit = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    assert math.isclose(losses.svare_preservation(teacher, student, weight=1.0).item(), kl_bit / 2, rel_tol=1e-5)
    assert math.isclose(losses.svare_preservation(teacher, student, weight=0.5).item(), kl_bit / 4, rel_tol=1e-5)


def test_vare_ce_option_is_mean_bit_ce():
    logits = _bit_logits([[0.25, 0.5]])
    targets = torch.tensor([[[1, 0]]])
    expected = (-math.log(0.25) - math.log(0.5)) / 2
    assert math.isclose(losses.vare_ce_loss(logits, targets).item(), expected, rel_tol=1e-6)


def test_vare_mse_sums_a_bits_two_classes_then_averages_bits_and_positions():
    # Two tokens of two bits; P(bit = 1) of student p and teacher q.
    student = _bit_logits([[0.25, 0.5], [0.9, 0.1]])
    teacher = _bit_logits([[0.75, 0.5], [0.6, 0.4]])
    # A bit's ‖p − q‖² over its classes {0, 1} is 2 (p₁ − q₁)².
    token0 = (2 * 0.5**2 + 0.0) / 2
    token1 = (2 * 0.3**2 + 2 * 0.3**2) / 2
    assert math.isclose(losses.vare_mse_loss(student, teacher).item(), (token0 + token1) / 2, rel_tol=1e-5)


def test_vare_mse_of_index_tokens_sums_over_the_codebook_and_averages_the_batch():
    p, q = [0.5, 0.25, 0.25], [0.2, 0.3, 0.5]
    student = torch.tensor([[p], [q]]).log()  # [B=2, L=1, V=3]; row 2 already equals the teacher
    teacher = torch.tensor([[q], [q]]).log()
    row0 = 0.3**2 + 0.05**2 + 0.25**2
    assert math.isclose(losses.vare_mse_loss(student, teacher).item(), row0 / 2, rel_tol=1e-5)


def test_vare_mse_does_not_differentiate_the_teacher():
    student = _bit_logits([[0.25, 0.5]]).requires_grad_(True)
    teacher = _bit_logits([[0.75, 0.5]]).requires_grad_(True)
    losses.vare_mse_loss(student, teacher).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_esd_target_is_negative_guidance_from_null():
    z_null, z_target = torch.tensor([1.0, 0.0]), torch.tensor([3.0, -1.0])
    assert losses.esd_target(z_null, z_target, eta=1.0).tolist() == [-1.0, 1.0]


def test_sace_target_with_eta_zero_is_the_anchor_and_eta_pushes_away():
    z_a, z_u = torch.tensor([0.5]), torch.tensor([2.0])
    assert losses.sace_erasure_target(z_a, z_u, eta=0.0).item() == 0.5
    assert losses.sace_erasure_target(z_a, z_u, eta=1.0).item() == 0.5 - 1.5


def test_sace_entropy_hinge_penalises_only_a_flatter_distribution():
    original = _bit_logits([[0.9]])
    flatter, sharper = _bit_logits([[0.6]]), _bit_logits([[0.99]])
    target = _bit_logits([[0.9]])
    _, flat_parts = losses.sace_erasure_loss(target, flatter, original, beta=1.0)
    _, sharp_parts = losses.sace_erasure_loss(target, sharper, original, beta=1.0)
    h = lambda x: -(x * math.log(x) + (1 - x) * math.log(1 - x))
    assert math.isclose(flat_parts["entropy_hinge"].item(), h(0.6) - h(0.9), rel_tol=1e-5)
    assert sharp_parts["entropy_hinge"].item() == 0.0


def test_naive_loss_is_negative_ce():
    logits = _bit_logits([[0.25]])
    targets = torch.tensor([[[1]]])
    assert math.isclose(losses.naive_ascent_loss(logits, targets).item(), math.log(0.25), rel_tol=1e-6)
