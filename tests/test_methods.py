"""Erasure methods on a tiny random model: update order, the SACE gate, declared parameters, runs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from conftest import random_condition
from varerase.data.pairs import PromptPair
from varerase.edits.delta import EditConfig, ParameterEdit
from varerase.edits.edited_model import EditedModel
from varerase.edits.file_format import load_edit, save_edit
from varerase.errors import ConfigError
from varerase.methods.config import SECTIONS, MethodConfig
from varerase.methods.losses import filtered_cross_entropy, flatten_maps, svare_preservation, vare_ce_loss, vare_mse_loss
from varerase.methods.registry import METHODS, eraser_class, method_config
from varerase.methods.runner import run_erasure
from varerase.models.base import SamplerConfig

PAIRS = [
    PromptPair("a red circle on a striped background", "a red square on a striped background"),
    PromptPair("a blue circle", "a blue star"),
    PromptPair("a photo of a green circle", "a photo of a green heart"),
]
RETAIN = ["a yellow triangle", "a purple cross on a dotted background"]


def _assert_edit_changes_base(edit, model):
    """Some merged weight ``W + Δ`` of ``edit`` differs from the base model's ``W``."""
    params = dict(model.named_parameters())
    merged = edit.changed_weights(model)
    assert any(not torch.equal(merged[name], params[name].detach().float()) for name in edit.names), "the edit equals the base model"


def _eraser(model, method, **overrides):
    config = method_config(method, overrides={"steps": 3, "batch_size": 2, **overrides})
    eraser = eraser_class(method)(model, PAIRS, config, RETAIN, progress=False)
    eraser.prepare()
    return eraser


@pytest.mark.parametrize("last_scale", [0, 2])
def test_sace_gate_moves_only_the_confined_scales_logits(tiny_model, last_scale):
    edit = ParameterEdit(tiny_model, EditConfig(groups=["cross_attn", "ffn", "start_token"], scope="gated", last_scale=last_scale))
    with torch.no_grad():
        for p in edit.parameters():
            p.normal_(std=0.05)
    edited, confined = EditedModel(tiny_model, edit), tiny_model.confined_positions(last_scale)
    cond = random_condition(2)
    maps = tiny_model.generate(cond, SamplerConfig(cfg=1.0), seed=0, decode=False).maps
    original, adapted = tiny_model.teacher_forced_logits(cond, maps), edited.teacher_forced_logits(cond, maps)
    torch.testing.assert_close(adapted[:, confined:], original[:, confined:], atol=0, rtol=0)
    assert not torch.allclose(adapted[:, :confined], original[:, :confined])
    torch.testing.assert_close(adapted[:, :confined], edited.confined_logits(cond, maps, last_scale), atol=0, rtol=0)
    # Sampling: given the same confined maps, every later scale's logits are the original model's.
    gen = edited.generate(cond, SamplerConfig(cfg=1.0), seed=3, decode=False)
    logits = gen.all_logits()
    torch.testing.assert_close(logits[:, confined:], tiny_model.teacher_forced_logits(cond, gen.maps)[:, confined:], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(logits[:, :confined], edited.confined_logits(cond, gen.maps, last_scale), atol=2e-5, rtol=1e-4)


def test_gated_edit_generates_exactly_the_originals_images_for_a_prompt_whose_confined_scales_it_leaves_alone(tiny_model):
    """Δ on the text pool's key/value weights of channels the benign prompt (and ∅) leave at zero: the target's
    confined scales change, the benign prompt's do not, and it generates the original's maps bit for bit."""
    zero = slice(0, 16)
    with torch.no_grad():
        tiny_model.transformer.cfg_uncond[:, zero] = 0
    edit = ParameterEdit(tiny_model, EditConfig(groups=["start_token_kv"], scope="gated", last_scale=2))
    with torch.no_grad():
        for delta in edit.deltas.values():
            delta[:, zero] = torch.randn(delta[:, zero].shape, generator=torch.Generator().manual_seed(5))
    edited = EditedModel(tiny_model, edit)
    benign, target = random_condition(3, seed=1), random_condition(3, seed=2)
    benign.features[..., zero] = 0
    sampler, seeds = SamplerConfig(cfg=3.0), [0, 1, 2]
    same, original = edited.generate(benign, sampler, seed=seeds, decode=False), tiny_model.generate(benign, sampler, seed=seeds, decode=False)
    assert all(torch.equal(a, b) for a, b in zip(same.maps, original.maps))
    assert all(torch.equal(a, b) for a, b in zip(same.logits, original.logits))
    moved = edited.generate(target, sampler, seed=seeds, decode=False).logits[0]
    assert not torch.allclose(moved, tiny_model.generate(target, sampler, seed=seeds, decode=False).logits[0])


def _scale_gated(model, groups, context, last_scale=0):
    edit = ParameterEdit(model, EditConfig(groups=groups, scope="gated", start_context=context, last_scale=last_scale))
    with torch.no_grad():
        for p in edit.parameters():
            p.normal_(std=0.05, generator=torch.Generator().manual_seed(1))
    return EditedModel(model, edit)


@pytest.mark.parametrize("last_scale", [0, 1])
def test_sace_adapted_context_lets_later_scales_attend_to_the_edited_confined_positions(tiny_model, tmp_path, last_scale):
    cond = random_condition(2)
    maps = tiny_model.generate(cond, SamplerConfig(cfg=1.0), seed=0, decode=False).maps
    original, confined = tiny_model.teacher_forced_logits(cond, maps), tiny_model.confined_positions(last_scale)
    strict = _scale_gated(tiny_model, ["cross_attn", "ffn", "start_token"], "original", last_scale)
    adapted = _scale_gated(tiny_model, ["cross_attn", "ffn", "start_token"], "adapted", last_scale)
    logits = adapted.teacher_forced_logits(cond, maps)
    torch.testing.assert_close(logits[:, :confined], strict.teacher_forced_logits(cond, maps)[:, :confined], atol=1e-6, rtol=0)
    assert (logits[:, confined:] - original[:, confined:]).abs().max() > 1e-3  # later scales see the edited confined positions
    # Sampling agrees with teacher forcing on its own maps (KV-cached path vs. one block-causal pass).
    gen = adapted.generate(cond, SamplerConfig(cfg=1.0), seed=3, decode=False)
    torch.testing.assert_close(gen.all_logits(), adapted.teacher_forced_logits(cond, gen.maps), atol=2e-5, rtol=1e-4)
    # An edit of the head leaves every start-position key/value alone: later scales are the original's.
    head_only = _scale_gated(tiny_model, ["head"], "adapted", last_scale).teacher_forced_logits(cond, maps)
    torch.testing.assert_close(head_only[:, confined:], original[:, confined:], atol=1e-6, rtol=0)
    # The choice and the confined scales travel with the saved edit.
    save_edit(adapted.edit, tmp_path / "edit.safetensors", tiny_model)
    loaded = load_edit(tiny_model, tmp_path)
    assert (loaded.edit.config.start_context, loaded.edit.config.last_scale) == ("adapted", last_scale)
    torch.testing.assert_close(loaded.teacher_forced_logits(cond, maps), logits, atol=1e-6, rtol=0)
    assert strict.fingerprint() != adapted.fingerprint()


def test_adapted_context_needs_a_scale_gated_edit_and_sace_passes_it_on(tiny_text_model):
    with pytest.raises(ConfigError, match="scale-gated"):
        EditConfig(groups=["ffn"], scope="all", start_context="adapted")
    with pytest.raises(ConfigError, match="context"):
        method_config("sace", overrides={"context": "blended"})
    eraser = eraser_class("sace")(tiny_text_model, PAIRS, method_config("sace", overrides={"context": "adapted"}), RETAIN, progress=False)
    assert eraser.edited.edit.config.start_context == "adapted"


def test_scope_all_edit_changes_later_scales_too(tiny_model):
    edit = ParameterEdit(tiny_model, EditConfig(groups=["ffn"]))
    with torch.no_grad():
        for p in edit.parameters():
            p.normal_(std=0.05)
    cond = random_condition(1)
    maps = tiny_model.generate(cond, SamplerConfig(cfg=1.0), seed=0, decode=False).maps
    assert not torch.allclose(EditedModel(tiny_model, edit).teacher_forced_logits(cond, maps)[:, 1:], tiny_model.teacher_forced_logits(cond, maps)[:, 1:])


def test_svare_two_step_computes_preservation_after_the_first_update(tiny_text_model):
    eraser = _eraser(tiny_text_model, "s-vare")
    reference = _eraser(tiny_text_model, "s-vare")
    seen = []

    def sgd(loss):
        seen.append(loss.detach())
        eraser.edit.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in eraser.edit.parameters():
                p -= 0.5 * p.grad
        return 0.0

    eraser.step(0, sgd)
    _assert_edit_changes_base(eraser.edit, tiny_text_model)
    # Recompute by hand: FCE on the initial edit, one SGD step, then preservation.
    pairs, maps, teacher = reference.batch(0)
    fce = filtered_cross_entropy(reference.edited.teacher_forced_logits(reference.encode([p.target for p in pairs]), maps), flatten_maps(maps))
    fce.backward()
    with torch.no_grad():
        for p in reference.edit.parameters():
            p -= 0.5 * p.grad
    pre_after = svare_preservation(teacher, reference.edited.teacher_forced_logits(reference.encode([p.anchor for p in pairs]), maps))
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], fce.detach())
    torch.testing.assert_close(seen[1], pre_after.detach())


def test_svare_joint_update_makes_one_step(tiny_text_model):
    eraser = _eraser(tiny_text_model, "s-vare", update="joint")
    calls = []
    eraser.step(0, lambda loss: calls.append(loss) or 0.0)
    assert len(calls) == 1


def test_vare_mse_pulls_the_edited_target_toward_the_frozen_model_on_the_anchor(tiny_text_model):
    eraser = _eraser(tiny_text_model, "vare")
    with torch.no_grad():
        for p in eraser.edit.parameters():
            p.normal_(std=0.05, generator=torch.Generator().manual_seed(2))  # so that edited and frozen models differ
    seen = []
    eraser.step(0, lambda loss: seen.append(loss.detach()) or 0.0)
    pairs, maps, _ = eraser.batch(0)
    student = eraser.edited.teacher_forced_logits(eraser.encode([p.target for p in pairs]), maps)
    teacher = tiny_text_model.teacher_forced_logits(eraser.encode([p.anchor for p in pairs]), maps)  # no CFG, no edit
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], vare_mse_loss(student, teacher).detach())
    assert eraser.forward_tokens == 2 * len(pairs) * tiny_text_model.num_tokens  # the frozen teacher's pass counts too


def test_vare_ce_option_is_the_teacher_forced_ce_to_the_anchor_tokens(tiny_text_model):
    eraser = _eraser(tiny_text_model, "vare", loss="ce")
    seen = []
    eraser.step(0, lambda loss: seen.append(loss.detach()) or 0.0)
    pairs, maps, _ = eraser.batch(0)
    logits = eraser.edited.teacher_forced_logits(eraser.encode([p.target for p in pairs]), maps)
    torch.testing.assert_close(seen[0], vare_ce_loss(logits, flatten_maps(maps)).detach())
    with pytest.raises(ConfigError, match=r"loss must be one of \['mse', 'ce'\]"):
        method_config("vare", overrides={"loss": "kl"})


def test_vare_mse_lowers_its_loss_over_a_few_steps(tiny_text_model):
    eraser = _eraser(tiny_text_model, "vare")
    optimizer = torch.optim.Adam(eraser.edit.parameters(), lr=1e-4)

    def adam(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return 0.0

    losses = [eraser.step(0, adam)["vare"] for _ in range(8)]  # the same batch every step
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("method", ["vare", "s-vare", "sace"])
def test_each_method_trains_only_its_declared_groups(tiny_text_model, method):
    before = {k: v.clone() for k, v in tiny_text_model.state_dict().items()}
    result = run_erasure(tiny_text_model, method, PAIRS, method_config(method, overrides={"steps": 3, "lr": 1e-2}), RETAIN, progress=False)
    after = tiny_text_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the base model must stay untouched"
    groups = tiny_text_model.module_groups()
    allowed = {n for g in result.model.edit.config.groups for m in groups[g] for n, _ in m.named_parameters()}
    declared = {name.split(".")[-1] for name in result.model.edit.names}
    assert declared and all(any(name.endswith(a) for a in allowed) for name in result.model.edit.names)
    changed = [n for n in result.model.edit.names if result.model.edit.delta(n).abs().max() > 0]
    assert changed, f"{method} changed nothing"


@pytest.mark.parametrize(("precision", "recorded_precision"), [("float32", "float32"), ("bf16", "bfloat16")])
def test_run_directory_and_resume_give_identical_edit(tiny_text_model, tmp_path, monkeypatch, precision, recorded_precision):
    config = method_config("s-vare", overrides={"steps": 4, "checkpoint_every": 2, "lr": 1e-2, "update_precision": precision})
    whole = run_erasure(tiny_text_model, "s-vare", PAIRS, config, RETAIN, run_dir=tmp_path / "full", progress=False)
    _assert_edit_changes_base(whole.model.edit, tiny_text_model)
    for name in ("config.yaml", "edit.safetensors", "metrics.json", "log.jsonl", "run.json"):
        assert (tmp_path / "full" / name).exists(), name
    assert json.loads((tmp_path / "full" / "run.json").read_text())["status"] == "complete"
    recorded = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())["method_config"]  # the settings tree, nested
    assert recorded["training"]["steps"] == 4 and recorded["edit"]["groups"] == ["cross_attn", "ffn"] and recorded["rho"] == 0.25
    assert recorded["training"]["update_precision"] == recorded_precision  # the alias bf16 is recorded by its name

    from varerase.methods.svare import SVARE

    original_step = SVARE.step

    def crash_at_three(self, index, update):
        if index == 3:
            raise KeyboardInterrupt
        return original_step(self, index, update)

    monkeypatch.setattr(SVARE, "step", crash_at_three)
    with pytest.raises(KeyboardInterrupt):
        run_erasure(tiny_text_model, "s-vare", PAIRS, config, RETAIN, run_dir=tmp_path / "cut", progress=False)
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "running"
    assert not (tmp_path / "cut" / "edit.safetensors").exists()
    monkeypatch.setattr(SVARE, "step", original_step)
    with pytest.raises(ConfigError, match="--resume"):
        run_erasure(tiny_text_model, "s-vare", PAIRS, config, RETAIN, run_dir=tmp_path / "cut", progress=False)
    lora = method_config("s-vare", overrides={"steps": 4, "checkpoint_every": 2, "lr": 1e-2, "lora_rank": 2})
    with pytest.raises(ConfigError, match="edit.lora_rank: 0 → 2"):  # other settings are refused before the state is read
        run_erasure(tiny_text_model, "s-vare", PAIRS, lora, RETAIN, run_dir=tmp_path / "cut", resume=True, progress=False)
    run_erasure(tiny_text_model, "s-vare", PAIRS, config, RETAIN, run_dir=tmp_path / "cut", resume=True, progress=False)
    from safetensors.torch import load_file

    full, cut = load_file(tmp_path / "full" / "edit.safetensors"), load_file(tmp_path / "cut" / "edit.safetensors")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    lines = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [1, 2, 3, 4]


def test_saved_edit_loads_back_to_the_same_model(tiny_text_model, tmp_path):
    config = method_config("s-vare", overrides={"steps": 2, "lr": 1e-2})
    result = run_erasure(tiny_text_model, "s-vare", PAIRS, config, run_dir=tmp_path / "run", progress=False)
    _assert_edit_changes_base(result.model.edit, tiny_text_model)
    loaded = load_edit(tiny_text_model, tmp_path / "run")
    cond = tiny_text_model.encode_text(["a red circle"])
    maps = tiny_text_model.generate(cond, SamplerConfig(cfg=1.0), seed=0, decode=False).maps
    torch.testing.assert_close(loaded.teacher_forced_logits(cond, maps), result.model.teacher_forced_logits(cond, maps), atol=1e-6, rtol=1e-5)


def test_lora_edit_round_trips_and_matches_peft(tiny_text_model, tmp_path):
    peft = pytest.importorskip("peft")
    config = method_config("vare", overrides={"steps": 2, "lr": 1e-2, "lora_rank": 2, "groups": ["ffn"]})
    result = run_erasure(tiny_text_model, "vare", PAIRS, config, run_dir=tmp_path / "run", progress=False)
    _assert_edit_changes_base(result.model.edit, tiny_text_model)
    loaded = load_edit(tiny_text_model, tmp_path / "run")
    cond = tiny_text_model.encode_text(["a blue circle"])
    maps = tiny_text_model.generate(cond, SamplerConfig(cfg=1.0), seed=0, decode=False).maps
    ours = loaded.teacher_forced_logits(cond, maps)
    torch.testing.assert_close(ours, result.model.teacher_forced_logits(cond, maps), atol=1e-6, rtol=1e-5)
    # The saved factors use peft's names: peft applies them to a copy of the model identically.
    import copy

    from safetensors.torch import load_file

    twin = copy.deepcopy(tiny_text_model)
    targets = sorted({n[: -len(".lora_A.weight")] for n in load_file(tmp_path / "run" / "edit.safetensors") if n.endswith(".lora_A.weight")})
    peft.inject_adapter_in_model(peft.LoraConfig(r=2, lora_alpha=2, target_modules=targets), twin)
    peft.set_peft_model_state_dict(twin, load_file(tmp_path / "run" / "edit.safetensors"))
    torch.testing.assert_close(twin.teacher_forced_logits(cond, maps), ours, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", list(METHODS))
def test_flat_keys_name_one_setting_each(method):
    config_class = METHODS[method].config_class
    top = [f.name for f in dataclasses.fields(config_class) if f.name not in SECTIONS]
    sections = [f.name for section in SECTIONS.values() for f in dataclasses.fields(section)]
    assert len(set(top + sections)) == len(top) + len(sections)  # a flat key never names two settings
    assert config_class.flat_keys().keys() == set(top + sections + list(config_class.aliases))  # aliases name settings that exist, under other names
    assert not set(config_class.aliases) & set(top + sections)


def test_flat_and_nested_settings_build_the_same_tree():
    flat = method_config("s-vare", "tiny", {"steps": 5, "lr": 0.01, "lora_rank": 4, "rho": 0.5})
    nested = method_config("s-vare", "tiny", {"training": {"steps": 5, "lr": 0.01}, "edit": {"lora_rank": 4}, "rho": 0.5})
    assert flat == nested
    assert (flat.training.steps, flat.training.lr, flat.edit.lora_rank, flat.rho, flat.batch_size) == (5, 0.01, 4, 0.5, 4)  # batch_size: the preset's
    assert flat.edit.groups == ["cross_attn", "ffn"] and flat.training.betas == (0.9, 0.97)  # untouched settings keep their defaults
    sace = method_config("sace", overrides={"context": "adapted"})
    assert (sace.edit.scope, sace.edit.start_context, sace.edit.groups) == ("gated", "adapted", ["cross_attn", "ffn", "start_token"])
    layered = MethodConfig.from_settings(({"lr": 0.5}, "a"), ({"training": {"steps": 3}}, "b"))  # later layers add to earlier ones
    assert layered.training == dataclasses.replace(MethodConfig().training, lr=0.5, steps=3)


def test_unknown_or_misplaced_settings_are_refused_naming_the_known_ones(tiny_text_model):
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['lrr'\]; known: .*'lr'"):
        method_config("vare", overrides={"lrr": 1e-3})
    with pytest.raises(ConfigError, match=r"unknown training setting\(s\) \['rho'\]; known: .*'steps'"):
        method_config("s-vare", overrides={"training": {"rho": 0.5}})
    with pytest.raises(ConfigError, match="scope"):  # the scope belongs to the method
        method_config("vare", overrides={"scope": "gated"})
    with pytest.raises(ConfigError, match="takes a SACEConfig"):
        run_erasure(tiny_text_model, "sace", PAIRS, method_config("vare"), progress=False)


def test_reference_preset_samples_auxiliary_tokens_as_the_reference_code(tiny_text_model):
    sampler = method_config("s-vare", "reference").aux_sampler(tiny_text_model)
    assert (sampler.cfg, sampler.temperature, sampler.top_k, sampler.top_p) == (4.0, 1.0, 900, 0.97)  # gen_one_img's defaults


def test_other_presets_sample_auxiliary_tokens_with_the_models_top_k_and_top_p(tiny_text_model):
    tiny_text_model.default_sampler = SamplerConfig(cfg=3.0, temperature=0.5, top_k=7, top_p=0.9)
    for method, preset in (("vare", None), ("s-vare", None), ("s-vare", "tiny"), ("esd", "tiny"), ("naive", None)):
        sampler = method_config(method, preset).aux_sampler(tiny_text_model)
        assert (sampler.cfg, sampler.temperature, sampler.top_k, sampler.top_p) == (4.0, 1.0, 7, 0.9)  # CFG and temperature: the method's
    explicit = method_config("s-vare", overrides={"top_k": 0, "top_p": 0.0}).aux_sampler(tiny_text_model)
    assert (explicit.top_k, explicit.top_p) == (0, 0.0)  # set: off, whatever the model's sampler does


def _merged(edit, model) -> dict[str, torch.Tensor]:
    """``W + Δ`` in float32, as the edited model's forward adds them."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().float() + edit.delta(name).detach() for name in edit.names}


def _is_bfloat16(weight: torch.Tensor) -> torch.Tensor:
    return weight == weight.bfloat16().float()


def test_bfloat16_updates_leave_every_merged_weight_a_bfloat16_value(tiny_text_model):
    with torch.no_grad():  # as the reference code's blocks, cast to bfloat16 before training
        for param in tiny_text_model.parameters():
            param.copy_(param.bfloat16().float())
    edits = {}
    for precision in ("float32", "bfloat16"):
        config = method_config("s-vare", overrides={"steps": 1, "lr": 1e-3, "update_precision": precision})
        edits[precision] = run_erasure(tiny_text_model, "s-vare", PAIRS, config, RETAIN, progress=False).model.edit
    assert all(_is_bfloat16(w).all() for w in _merged(edits["bfloat16"], tiny_text_model).values())
    assert not all(_is_bfloat16(w).all() for w in _merged(edits["float32"], tiny_text_model).values())  # float32 keeps finer updates
    assert sum(int((edits["bfloat16"].delta(n) != 0).sum()) for n in edits["bfloat16"].names) > 0


def test_bfloat16_rounding_of_a_float32_base_misses_only_weights_no_float32_delta_can_reach(tiny_text_model):
    edit = ParameterEdit(tiny_text_model, EditConfig())
    with torch.no_grad():
        for delta in edit.parameters():
            delta.normal_(std=1e-3, generator=torch.Generator().manual_seed(1))
    edit.round_merged_weights(tiny_text_model, torch.bfloat16)
    params = dict(tiny_text_model.named_parameters())
    for name, merged in _merged(edit, tiny_text_model).items():
        base, rounded = params[name].detach(), merged.bfloat16().float()
        sterbenz = (rounded * base > 0) & (rounded.abs() <= 2 * base.abs()) & (base.abs() <= 2 * rounded.abs())
        assert _is_bfloat16(merged)[sterbenz].all(), name
        half_ulp = (torch.nextafter(edit.delta(name).abs(), torch.tensor(torch.inf)) - edit.delta(name).abs()) / 2
        assert ((merged - rounded).abs() <= half_ulp.detach()).all(), name
    with pytest.raises(ConfigError, match="LoRA"):
        method_config("s-vare", overrides={"lora_rank": 2, "update_precision": "bfloat16"})


def test_benchmark_variants_name_a_method_with_settings_of_its_own():
    from varerase.methods.registry import BENCHMARK_VARIANTS, method_variant

    variant = method_variant("vare[loss=ce,lr=1e-3]")
    assert (variant.method, variant.settings, variant.folder) == ("vare", {"loss": "ce", "lr": 1e-3}, "vare_loss-ce_lr-0.001")
    assert method_variant("s-vare").settings == {} and method_variant("s-vare").folder == "s-vare"
    assert "vare[loss=ce]" in BENCHMARK_VARIANTS
    config = method_config("vare", overrides=method_variant("vare[loss=ce]").settings)
    assert config.loss == "ce"
    for bad, message in (("vare[loss=ce", "METHOD\\[KEY=VALUE"), ("nope[loss=ce]", "unknown method"), ("vare[loss]", "KEY=VALUE")):
        with pytest.raises(ConfigError, match=message):
            method_variant(bad)


@pytest.mark.parametrize(("value", "last_scale"), [(0, 0), ("0", 0), ("0-2", 2), ([0, 1, 2, 3], 3)])
def test_sace_scales_setting_names_the_confined_prefix(value, last_scale):
    config = method_config("sace", overrides={"scales": value})
    assert config.edit.last_scale == last_scale and not config.is_auto
    assert method_config("sace", overrides={"scales": "auto"}).is_auto


@pytest.mark.parametrize(
    ("value", "message"),
    [(2, r"scales=2 is ambiguous.*write scales=0-2"), ("1-3", "confined scales start at 0"), ([0, 2], "0, 1, …, K in order"),
     ("all", "scales must be 0 .*got 'all'"), (1.5, "scales must be 0")],
)
def test_sace_refuses_scales_that_are_not_a_prefix_from_zero(value, message):
    with pytest.raises(ConfigError, match=message):
        method_config("sace", overrides={"scales": value})


def test_sace_refuses_more_scales_than_the_model_has_and_an_unresolved_auto(tiny_text_model):
    with pytest.raises(ConfigError, match="exceeds the model's 4 scales; the last is 3"):
        eraser_class("sace")(tiny_text_model, PAIRS, method_config("sace", overrides={"scales": "0-4"}), RETAIN, progress=False)
    with pytest.raises(ConfigError, match="scales=auto is resolved from ISSA"):
        eraser_class("sace")(tiny_text_model, PAIRS, method_config("sace", overrides={"scales": "auto"}), RETAIN, progress=False)


def test_sace_confined_to_two_scales_trains_on_teacher_forced_anchor_maps_and_counts_its_positions(tiny_text_model, tmp_path):
    steps, batch, benign = 3, 2, 4
    config = method_config("sace", overrides={"scales": "0-2", "steps": steps, "batch_size": batch, "benign_batch_size": benign, "lr": 1e-2})
    result = run_erasure(tiny_text_model, "sace", PAIRS, config, RETAIN, run_dir=tmp_path / "run", progress=False)
    positions = tiny_text_model.confined_positions(2)  # 1 + 4 + 9
    benign_rows = len(PAIRS) + len(RETAIN) + len(PAIRS)  # anchors, retain prompts, ∅ per target
    assert result.metrics["forward_tokens"] == (4 * len(PAIRS) + benign_rows + steps * (batch + benign)) * positions
    assert len(list((tmp_path / "run" / "teacher_cache").glob("*.safetensors"))) == len(PAIRS)  # the anchors' maps, nothing else
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["method_config"]["edit"]["last_scale"] == 2
    edited, confined = load_edit(tiny_text_model, tmp_path / "run"), positions
    cond = tiny_text_model.encode_text([PAIRS[0].target])
    maps = tiny_text_model.generate(cond, SamplerConfig(cfg=1.0), seed=0, decode=False).maps
    original, after = tiny_text_model.teacher_forced_logits(cond, maps), edited.teacher_forced_logits(cond, maps)
    assert not torch.allclose(after[:, :confined], original[:, :confined])  # trained: the confined scales moved
    torch.testing.assert_close(after[:, confined:], original[:, confined:], atol=0, rtol=0)  # the rest is the original's


def _write_issa(folder, switch_in, fingerprint, concept="circle"):
    """An ``analyze issa`` result as :class:`IssaCurves` reads it (the commit curve mirrored: only switch-in decides here)."""
    folder.mkdir(parents=True)
    curves = {"switch_in": switch_in, "commit": [1 - p for p in switch_in]}
    (folder / "issa.json").write_text(json.dumps({"concept": concept, "curves": curves, "settings": {"model_fingerprint": fingerprint}}))
    return folder


def test_sace_warns_at_scales_zero_only_with_issa_at_hand_and_auto_takes_its_recommendation(tiny_text_model, tmp_path):
    import warnings

    import varerase.api as ve
    from varerase.errors import VarEraseWarning

    fingerprint = tiny_text_model.fingerprint()
    late = _write_issa(tmp_path / "late", [1.0, 0.9, 0.5, 0.05, 0.0], fingerprint)
    erase = dict(method="sace", concepts=["circle"], steps=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ISSA at hand: not a word
        ve.erase(tiny_text_model, out=tmp_path / "none", **erase)
    with pytest.warns(VarEraseWarning, match=r"scale 0 prevents only 10% of 'circle'.*try --set scales=auto \(ISSA recommends scales=0-2\)"):
        ve.erase(tiny_text_model, out=tmp_path / "given", issa=late, **erase)
    early = _write_issa(tmp_path / "early", [1.0, 0.05, 0.0, 0.0, 0.0], fingerprint)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scale 0 prevents 95 %: nothing to warn about
        ve.erase(tiny_text_model, out=tmp_path / "early_run", issa=early, **erase)
    auto = ve.erase(tiny_text_model, out=tmp_path / "auto", issa=late, scales="auto", **erase)
    assert auto.model.edit.config.last_scale == 2
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["scales_auto"]["issa"] == str(late)
    with pytest.raises(ConfigError, match="analysed concept 'circle', not red"):
        ve.erase(tiny_text_model, out=tmp_path / "red", issa=late, **{**erase, "concepts": ["red"]})
    with pytest.raises(ConfigError, match="analysed another model"):
        ve.erase(tiny_text_model, out=tmp_path / "other", issa=_write_issa(tmp_path / "other_model", [1.0, 0.0, 0.0, 0.0, 0.0], "0123"), **erase)
