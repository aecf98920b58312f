"""Baselines (METHODS.md §6): UCE's closed form, ESD's frozen targets, naive ascent, and their runs."""

from __future__ import annotations

import json

import pytest
import torch

from varerase.data.pairs import PromptPair
from varerase.edits.file_format import load_edit
from varerase.errors import ConfigError
from varerase.methods.losses import flatten_maps, per_unit_cross_entropy
from varerase.methods.registry import eraser_class, method_config
from varerase.methods.runner import run_erasure
from varerase.methods.teacher_cache import TeacherCache
from varerase.methods.uce import kv_text_features, paired_token_features, uce_closed_form
from varerase.models.base import SamplerConfig, module_group_parameters

PAIRS = [
    PromptPair("a red circle on a striped background", "a red square on a striped background"),
    PromptPair("a blue circle", "a blue star"),
    PromptPair("a photo of a green circle", "a green heart"),  # different lengths: mean features
]
RETAIN = ["a yellow triangle", "a purple cross on a dotted background"]


def _run(model, method, **overrides):
    """A short run; trained methods get one pair, since generating its maps dominates their cost on CPU."""
    if method == "uce":
        return run_erasure(model, method, PAIRS, method_config(method, overrides=overrides), RETAIN, progress=False)
    config = method_config(method, overrides={"steps": 2, "batch_size": 1, "lr": 1e-2, **overrides})
    return run_erasure(model, method, PAIRS[:1], config, RETAIN, progress=False)


def test_uce_closed_form_equals_stacked_least_squares():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 6, generator=g, dtype=torch.float64)
    erased, anchors = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    preserved = torch.randn(4, 6, generator=g, dtype=torch.float64)
    lam, scale = 0.3, 0.7
    # min ‖W'E_uᵀ − W E_aᵀ‖² + s‖W'E_pᵀ − W E_pᵀ‖² + λ‖W' − W‖² as one system X·W'ᵀ ≈ Y.
    inputs = torch.cat([erased, scale**0.5 * preserved, lam**0.5 * torch.eye(6, dtype=torch.float64)])
    outputs = torch.cat([anchors @ weight.T, scale**0.5 * preserved @ weight.T, lam**0.5 * weight.T])
    expected = torch.linalg.lstsq(inputs, outputs).solution.T
    torch.testing.assert_close(uce_closed_form(weight, erased, anchors, preserved, lam, scale), expected, atol=1e-6, rtol=1e-6)


def test_uce_pairs_tokens_by_position_only_for_equal_lengths():
    features_u, features_a = torch.arange(24.0).view(2, 3, 4), -torch.arange(24.0).view(2, 3, 4)
    mask_u = torch.tensor([[True, True, False], [True, True, True]])
    mask_a = torch.tensor([[True, True, False], [True, False, False]])
    e_u, e_a = paired_token_features(features_u, mask_u, features_a, mask_a)
    torch.testing.assert_close(e_u, torch.cat([features_u[0, :2], features_u[1].mean(0, keepdim=True)]))
    torch.testing.assert_close(e_a, torch.cat([features_a[0, :2], features_a[1, :1]]))


def test_uce_config_refuses_training_settings_and_other_groups():
    for overrides in ({"steps": 5}, {"lora_rank": 2}, {"groups": ["ffn"]}, {"lam": 0.0}):
        with pytest.raises(ConfigError):
            method_config("uce", overrides=overrides)
    assert method_config("uce", overrides={"edit_start_token": True}).edit.groups == ["cross_attn_kv", "start_token_kv"]


def test_esd_targets_are_the_formula_on_frozen_logits_of_the_target_generations(tiny_text_model):
    pairs = PAIRS[1:]  # prompts of different lengths: targets are computed in one padded batch
    config = method_config("esd", overrides={"steps": 1, "eta": 1.5, "batch_size": 2})
    eraser = eraser_class("esd")(tiny_text_model, pairs, config, RETAIN, progress=False)
    eraser.prepare()
    assert eraser.requests == [(p.target, config.aux_seed) for p in pairs]
    for i, (prompt, seed) in enumerate(eraser.requests):
        cond = tiny_text_model.encode_text([prompt])
        maps = [m[None] for m in eraser.cache.get(prompt, seed).maps]
        z_target = tiny_text_model.teacher_forced_logits(cond, maps)
        z_null = tiny_text_model.teacher_forced_logits(tiny_text_model.null_condition(cond), maps)
        torch.testing.assert_close(eraser.target_logits[i], (z_null - 1.5 * (z_target - z_null))[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("method", "overrides", "groups"),
    [
        ("esd", {}, ["cross_attn", "ffn"]),
        ("naive", {}, ["cross_attn", "ffn"]),
        ("uce", {}, ["cross_attn_kv"]),
        ("uce", {"edit_start_token": True}, ["cross_attn_kv", "start_token_kv"]),
    ],
)
def test_baseline_changes_only_its_declared_parameters(tiny_text_model, method, overrides, groups):
    before = {k: v.clone() for k, v in tiny_text_model.state_dict().items()}
    edit = _run(tiny_text_model, method, **overrides).model.edit
    assert all(torch.equal(before[k], v) for k, v in tiny_text_model.state_dict().items()), "the base model must stay untouched"
    assert edit.config.groups == groups
    declared = {name for name, _ in module_group_parameters(tiny_text_model, groups)}
    changed = {name for name in edit.names if edit.delta(name).abs().max() > 0}
    assert changed and changed <= declared
    if method == "uce":
        assert changed == declared  # every key/value map moves (they have no bias)


def test_uce_moves_target_keys_values_toward_the_anchor(tiny_text_model):
    edit = _run(tiny_text_model, "uce", preserve_scale=0.1).model.edit
    pair = PAIRS[0]
    cond_u, cond_a = tiny_text_model.encode_text([pair.target]), tiny_text_model.encode_text([pair.anchor])
    linear = tiny_text_model.module_groups()["cross_attn_kv"][0]
    name = next(n for n, p in tiny_text_model.named_parameters() if p is linear.weight)
    e_u = kv_text_features(tiny_text_model, {name: linear}, cond_u)[name][0].float()
    e_a = kv_text_features(tiny_text_model, {name: linear}, cond_a)[name][0].float()
    weight, new_weight = linear.weight, linear.weight + edit.delta(name)
    assert (e_u @ new_weight.T - e_a @ weight.T).norm() < 0.5 * (e_u @ weight.T - e_a @ weight.T).norm()


def test_uce_run_saves_an_edit_that_loads_back_to_the_same_logits(tiny_text_model, tmp_path):
    result = run_erasure(tiny_text_model, "uce", PAIRS, method_config("uce"), RETAIN, run_dir=tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "complete"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 0
    loaded = load_edit(tiny_text_model, tmp_path / "run")
    cond = tiny_text_model.encode_text(["a red circle on a striped background"])
    maps = tiny_text_model.generate(cond, SamplerConfig(cfg=1.0), seed=0, decode=False).maps
    original = tiny_text_model.teacher_forced_logits(cond, maps)
    edited = result.model.teacher_forced_logits(cond, maps)
    assert not torch.allclose(edited, original)
    torch.testing.assert_close(loaded.teacher_forced_logits(cond, maps), edited, atol=1e-6, rtol=1e-5)


def test_naive_fine_tuning_raises_cross_entropy_of_the_models_own_generations(tiny_text_model, tmp_path):
    pairs = PAIRS[:2]
    config = method_config("naive", overrides={"steps": 2, "lr": 1e-2})
    result = run_erasure(tiny_text_model, "naive", pairs, config, RETAIN, cache_dir=tmp_path, progress=False)
    assert any(result.model.edit.delta(name).abs().max() > 0 for name in result.model.edit.names), "the edit equals the base model"
    cache = TeacherCache(tiny_text_model, config.aux_sampler(tiny_text_model), tmp_path)
    maps, _ = cache.batch([(p.target, config.aux_seed) for p in pairs])
    assert cache.generated == 0  # the very generations the run trained on
    cond = tiny_text_model.encode_text([p.target for p in pairs])
    with torch.no_grad():
        ce_before = per_unit_cross_entropy(tiny_text_model.teacher_forced_logits(cond, maps), flatten_maps(maps)).mean()
        ce_after = per_unit_cross_entropy(result.model.teacher_forced_logits(cond, maps), flatten_maps(maps)).mean()
    assert ce_after > ce_before
