"""ISSA: switch-scale endpoints, both curves from the same seeds, saliency arithmetic, the verdict, the detector-free KL, written artifacts."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FunctionDetector
from varerase.data.pairs import PromptPair
from varerase.edits.delta import EditConfig, ParameterEdit
from varerase.edits.edited_model import EditedModel
from varerase.errors import ConfigError
from varerase.evaluation.issa import IssaCurves, compute_issa, run_issa, saliency
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
    assert strip.shape[:3] == (len(SEEDS), 2, S + 1)
    assert torch.equal(strip[:, 0, 0], pure_u.images) and torch.equal(strip[:, 0, S], pure_a.images)
    assert torch.equal(strip[:, 1, 0], pure_a.images) and torch.equal(strip[:, 1, S], pure_u.images)  # commit: the other way round


def test_commit_curve_generates_target_before_k_and_anchor_after_from_the_same_seeds(decoding_model):
    """The fake decoder shows scale 0's first bits and the last scale's: commit k = 1 keeps c_u's scale 0, then c_a's last scale."""
    model, S = decoding_model, len(decoding_model.schedule)
    result = compute_issa(model, [PAIR], first_bit_detector(), "circle", SAMPLER, SEEDS, progress=False)
    cond_u, cond_a = (model.encode_text([p] * len(SEEDS)) for p in (PAIR.target, PAIR.anchor))
    expected = model.generate(cond_u, SAMPLER, seed=SEEDS, switch=ConditionSwitch(1, cond_a)).images
    assert torch.equal(result.strips[0][:, 1, 1], expected)
    detected = torch.tensor(result.pairs[0].detected_commit)  # [seeds, S+1]
    assert result.commit == pytest.approx(detected.float().mean(0).tolist())
    assert result.commit[0] == result.switch_in[S] and result.commit[S] == result.switch_in[0]


def test_verdict_recommends_the_smallest_confinement_that_prevents_the_concept():
    late = IssaCurves("circle", switch_in=[1.0, 1.0, 0.9, 0.5, 0.05, 0.0, 0.0], commit=[0.0, 0.0, 0.1, 0.3, 0.9, 1.0, 1.0], model_fingerprint="m")
    assert late.prevented_at_scale_0 == pytest.approx(0.0) and late.recommended_last_scale == 3
    assert late.verdict().startswith("scale 0 prevents 0% and commits 0% of 'circle'; a SACE confined to scales 0–3 can prevent at most 95%")
    assert "recommended `--set scales=0-3`" in late.verdict() and "does not hold" in late.verdict()
    singular = IssaCurves("circle", switch_in=[1.0, 0.05, 0.0, 0.0], commit=[0.0, 0.95, 1.0, 1.0], model_fingerprint="m")
    assert singular.recommended_last_scale == 0 and "`--set scales=0`" in singular.verdict() and "holds here" in singular.verdict()
    never = IssaCurves("red", switch_in=[1.0, 1.0, 0.6, 0.5], commit=[0.5, 0.8, 1.0, 1.0], model_fingerprint="m")
    assert never.recommended_last_scale == 2 and "no confinement reaches" in never.verdict()


def test_saliency_telescopes_to_the_presence_drop(decoding_model):
    assert saliency([0.9, 0.4, 0.5, 0.1]) == pytest.approx([0.5, -0.1, 0.4])
    result = compute_issa(decoding_model, [PAIR, ("a blue disc", "a blue star")], first_bit_detector(), "disc", SAMPLER, SEEDS, progress=False)
    assert result.concept == "circle"
    assert len(result.switch_in) == len(result.commit) == len(result.schedule) + 1 and len(result.saliency) == len(result.schedule)
    assert sum(result.saliency) == pytest.approx(result.switch_in[0] - result.switch_in[-1])
    assert result.saliency[result.entry_scale] == max(result.saliency)


def test_kl_curve_is_zero_when_target_and_anchor_are_the_same_prompt(decoding_model):
    same = compute_issa(decoding_model, [("a red circle", "a red circle")], None, None, SAMPLER, SEEDS, progress=False)
    assert same.kl == [0.0] * len(decoding_model.schedule)
    assert same.switch_in is None and same.commit is None and "Detector-free" in same.summary()
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
    assert saved["curves"]["switch_in"] == result.switch_in and saved["curves"]["commit"] == result.commit
    assert [row["commit"] for row in saved["table"]] == result.commit
    assert saved["verdict"] == result.curves().verdict() and saved["verdict"] in saved["summary"]
    assert saved["recommended_scales"] in ("0", f"0-{result.curves().recommended_last_scale}")
    assert len(saved["pairs"][0]["detected_in"]) == len(saved["pairs"][0]["detected_commit"]) == 2
    read = IssaCurves.read(tmp_path)
    assert (read.switch_in, read.commit, read.model_fingerprint) == (result.switch_in, result.commit, edited.fingerprint())
    with pytest.raises(ConfigError, match="no ISSA results at"):
        IssaCurves.read(tmp_path / "elsewhere")
    assert (tmp_path / "issa.png").stat().st_size > 0
    assert (tmp_path / "strips" / "pair_00.png").exists()
