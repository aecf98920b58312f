"""ISSA: switch-scale endpoints, saliency arithmetic, the detector-free KL, written artifacts."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FunctionDetector
from varerase.data.pairs import PromptPair
from varerase.edits.delta import EditConfig, ParameterEdit
from varerase.edits.edited_model import EditedModel
from varerase.evaluation.issa import compute_issa, run_issa, saliency
from varerase.models.base import ConditionSwitch, SamplerConfig

SAMPLER = SamplerConfig(cfg=3.0)  # guided, so both CFG branches of the switch are exercised
SEEDS = [0, 1, 2]
PAIR = PromptPair("a red circle", "a red square")


def first_bit_detector() -> FunctionDetector:
    """Scores 'circle' by the image's first pixel, which the fake decoder takes from scale 0's first bit."""
    return FunctionDetector(lambda images: images[:, 0, 0, 0], concepts=("circle",))


def _bits_decoder(maps):
    """Fake VAE: a 4×4 image per row whose pixels are the bits of the last two scales' first tokens."""
    bits = torch.cat([maps[0][:, 0, 0], maps[-1][:, 0, 0]], dim=-1).float()  # [B, 2d]
    return bits[:, :3, None, None].expand(-1, 3, 4, 4) * 0.5 + bits[:, 3:6, None, None] * 0.5


@pytest.fixture
def decoding_model(tiny_text_model, monkeypatch):
    monkeypatch.setattr(tiny_text_model, "decode", _bits_decoder)
    return tiny_text_model


def test_switch_at_zero_and_at_S_reproduce_pure_target_and_anchor_generations(decoding_model):
    model, S = decoding_model, len(decoding_model.schedule)
    cond_u = model.encode_text([PAIR.target] * len(SEEDS))
    cond_a = model.encode_text([PAIR.anchor] * len(SEEDS))
    pure_u = model.generate(cond_u, SAMPLER, seed=SEEDS)
    pure_a = model.generate(cond_a, SAMPLER, seed=SEEDS)
    for k, pure in ((0, pure_u), (S, pure_a)):
        switched = model.generate(cond_a, SAMPLER, seed=SEEDS, switch=ConditionSwitch(k, cond_u))
        assert all(torch.equal(a, b) for a, b in zip(switched.maps, pure.maps))
    strip = compute_issa(model, [PAIR], first_bit_detector(), "circle", SAMPLER, SEEDS, progress=False).strips[0]
    assert strip.shape[:2] == (len(SEEDS), S + 1)
    assert torch.equal(strip[:, 0], pure_u.images) and torch.equal(strip[:, S], pure_a.images)


def test_saliency_telescopes_to_the_presence_drop(decoding_model):
    assert saliency([0.9, 0.4, 0.5, 0.1]) == pytest.approx([0.5, -0.1, 0.4])
    result = compute_issa(decoding_model, [PAIR, ("a blue disc", "a blue star")], first_bit_detector(), "disc", SAMPLER, SEEDS, progress=False)
    assert result.concept == "circle"
    assert len(result.presence) == len(result.schedule) + 1 and len(result.saliency) == len(result.schedule)
    assert sum(result.saliency) == pytest.approx(result.presence[0] - result.presence[-1])
    assert result.saliency[result.entry_scale] == max(result.saliency)


def test_kl_curve_is_zero_when_target_and_anchor_are_the_same_prompt(decoding_model):
    same = compute_issa(decoding_model, [("a red circle", "a red circle")], None, None, SAMPLER, SEEDS, progress=False)
    assert same.kl == [0.0] * len(decoding_model.schedule)
    assert same.presence is None and "Detector-free" in same.summary()
    different = compute_issa(decoding_model, [PAIR], None, None, SAMPLER, SEEDS, progress=False)
    assert all(value > 0 for value in different.kl)


def test_run_issa_on_an_edited_model_writes_table_plot_and_strips(decoding_model, tmp_path):
    edit = ParameterEdit(decoding_model, EditConfig(groups=["cross_attn"]))
    for delta in edit.deltas.values():
        delta.data = 0.1 * torch.randn(delta.shape, generator=torch.Generator().manual_seed(3))
    edited = EditedModel(decoding_model, edit.requires_grad_(False))
    result = run_issa(edited, [PAIR], first_bit_detector(), "circle", SAMPLER, SEEDS[:2], tmp_path, progress=False)
    saved = json.loads((tmp_path / "issa.json").read_text())
    assert [row["k"] for row in saved["table"]] == list(range(len(edited.schedule) + 1))
    assert saved["entry_scale"] == result.entry_scale and saved["summary"].startswith("Concept 'circle' enters at scale")
    assert saved["pairs"][0]["detected"] and len(saved["pairs"][0]["detected"]) == 2
    assert (tmp_path / "issa.png").stat().st_size > 0
    assert (tmp_path / "strips" / "pair_00.png").exists()
