"""The Infinity port: KV cache against teacher forcing, scale 0, CFG, sampling, schedules, checkpoints."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_SCHEDULE, random_condition
from varerase.errors import CheckpointError, ConfigError
from varerase.models.base import ConditionSwitch, SamplerConfig
from varerase.models.sampling import cfg_combine, filter_top_k_top_p, sample_units
from varerase.models.schedule import block_causal_mask, infinity_schedule, rope_reference_grid, scale_offsets


def test_generation_logits_equal_teacher_forced_logits_on_generated_maps(tiny_model):
    cond = random_condition(3)
    gen = tiny_model.generate(cond, SamplerConfig(cfg=1.0), seed=1, decode=False)
    tf = tiny_model.teacher_forced_logits(cond, gen.maps)
    assert tf.shape == (3, tiny_model.num_tokens, 6, 2)
    torch.testing.assert_close(gen.all_logits(), tf, atol=2e-5, rtol=1e-4)


def test_guided_generation_logits_equal_cfg_of_teacher_forced_branches(tiny_model):
    cond = random_condition(2)
    gen = tiny_model.generate(cond, SamplerConfig(cfg=2.5), seed=3, decode=False)
    z_c = tiny_model.teacher_forced_logits(cond, gen.maps)
    z_u = tiny_model.teacher_forced_logits(tiny_model.null_condition(cond), gen.maps)
    torch.testing.assert_close(gen.all_logits(), 2.5 * z_c - 1.5 * z_u, atol=5e-5, rtol=1e-4)


def test_first_scale_logits_equal_teacher_forced_position_zero(tiny_model):
    cond = random_condition(4, seed=2)
    maps = tiny_model.generate(cond, SamplerConfig(cfg=1.0), seed=0, decode=False).maps
    torch.testing.assert_close(tiny_model.first_scale_logits(cond), tiny_model.teacher_forced_logits(cond, maps)[:, :1], atol=1e-5, rtol=1e-5)


def test_teacher_forcing_is_block_causal(tiny_model):
    cond = random_condition(1)
    maps = tiny_model.generate(cond, SamplerConfig(cfg=1.0), seed=0, decode=False).maps
    changed = [m.clone() for m in maps]
    changed[2] = 1 - changed[2]  # feeds scale 3 only
    a = tiny_model.teacher_forced_logits(cond, maps)
    b = tiny_model.teacher_forced_logits(cond, changed)
    end_of_scale_2 = scale_offsets(TINY_SCHEDULE)[3]
    torch.testing.assert_close(a[:, :end_of_scale_2], b[:, :end_of_scale_2])
    assert not torch.allclose(a[:, end_of_scale_2:], b[:, end_of_scale_2:])


def test_same_seed_same_maps_and_different_seed_different_maps(tiny_model):
    cond = random_condition(2)
    sampler = SamplerConfig(cfg=3.0, top_p=0.9)
    a = tiny_model.generate(cond, sampler, seed=7, decode=False).maps
    b = tiny_model.generate(cond, sampler, seed=7, decode=False).maps
    c = tiny_model.generate(cond, sampler, seed=8, decode=False).maps
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_switch_at_zero_and_at_end_reproduce_pure_generations(tiny_model):
    c_u, c_a = random_condition(2, seed=1), random_condition(2, seed=2)
    sampler = SamplerConfig(cfg=2.0)
    pure_u = tiny_model.generate(c_u, sampler, seed=5, decode=False).maps
    pure_a = tiny_model.generate(c_a, sampler, seed=5, decode=False).maps
    at_zero = tiny_model.generate(c_a, sampler, seed=5, decode=False, switch=ConditionSwitch(0, c_u)).maps
    at_end = tiny_model.generate(c_a, sampler, seed=5, decode=False, switch=ConditionSwitch(len(TINY_SCHEDULE), c_u)).maps
    assert all(torch.equal(x, y) for x, y in zip(at_zero, pure_u))
    assert all(torch.equal(x, y) for x, y in zip(at_end, pure_a))


def test_cfg_formula_is_infinity_form():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    torch.testing.assert_close(cfg_combine(cond, uncond, 3.0), torch.tensor([3 * 2.0 - 2 * 0.5, 3 * -1.0 - 2 * 1.0]))


def test_top_k_keeps_k_largest_and_top_p_keeps_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_top_k_top_p(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # cumulative mass of the smallest entries ≤ 1 − 0.8 = 0.2 is dropped: 0.05, then 0.05+0.15
    assert torch.isinf(filter_top_k_top_p(logits, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_top_k_top_p(logits, top_p=0.9)).tolist() == [[False, False, False, True]]


def test_per_bit_top_p_suppresses_unlikely_bit_values():
    # Bit logits: p(bit=1) = 0.01 → with top_p 0.97 the value 1 can never be drawn.
    bit_logits = torch.log(torch.tensor([0.99, 0.01])).expand(1000, 2)
    g = torch.Generator().manual_seed(0)
    assert sample_units(bit_logits, top_p=0.97, generator=g).sum() == 0
    assert sample_units(bit_logits, generator=torch.Generator().manual_seed(0)).sum() > 0


def test_official_schedule_token_counts():
    assert [sum(h * w for h, w in infinity_schedule(p)) for p in ("0.06M", "0.25M", "1M")] == [521, 2521, 10521]
    assert rope_reference_grid(infinity_schedule("0.06M")) == (64, 64)
    assert len(infinity_schedule("1M", aspect_ratio=0.5)) == 13
    mask = block_causal_mask([(1, 1), (2, 2)])
    assert mask[0].tolist() == [True, False, False, False, False]
    assert mask[1].all()


def test_save_load_round_trip_gives_identical_logits(tiny_model, tmp_path):
    from varerase.models.infinity.model import InfinityModel

    cond = random_condition(2)
    maps = tiny_model.generate(cond, SamplerConfig(cfg=1.0), seed=0, decode=False).maps
    tiny_model.save_pretrained(tmp_path)
    loaded = InfinityModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.teacher_forced_logits(cond, maps), tiny_model.teacher_forced_logits(cond, maps), atol=0, rtol=0)


def test_checkpoint_with_renamed_key_fails_naming_it(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    from varerase.models.infinity.model import InfinityModel

    tiny_model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "transformer.safetensors")
    state["blocks.1.ffn.fc1.weight_renamed"] = state.pop("blocks.1.ffn.fc1.weight")
    save_file(state, tmp_path / "transformer.safetensors")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.ffn\.fc1\.weight_renamed") as info:
        InfinityModel.from_pretrained(tmp_path)
    assert "missing keys: blocks.1.ffn.fc1.weight" in str(info.value)


def test_invalid_sampler_settings_are_rejected():
    from varerase.errors import ConfigError

    with pytest.raises(ConfigError):
        SamplerConfig(cfg=-1)
    with pytest.raises(ConfigError):
        SamplerConfig(top_p=1.5)
    with pytest.raises(ConfigError):
        SamplerConfig(temperature=0)


def test_per_row_seeds_make_a_sample_independent_of_its_batch(tiny_model):
    cond = random_condition(3)
    sampler = SamplerConfig(cfg=2.0)
    batch = tiny_model.generate(cond, sampler, seed=[11, 12, 13], decode=False).maps
    alone = tiny_model.generate(cond.select([1]), sampler, seed=[12], decode=False).maps
    assert all(torch.equal(b[1:2], a) for b, a in zip(batch, alone))


def test_negative_prompt_replaces_the_unconditional_branch(tiny_model):
    cond, negative = random_condition(3, seed=1), random_condition(1, tokens=3, seed=2)
    unconditional_only = SamplerConfig(cfg=0.0)  # z_γ = 0·z(c) + 1·z(uncond): the unconditional branch's logits
    with_negative = tiny_model.generate(cond, unconditional_only, seed=[1, 2, 3], decode=False, negative=negative)
    as_prompt = tiny_model.generate(negative.select([0, 0, 0]), SamplerConfig(cfg=1.0), seed=[1, 2, 3], decode=False)
    assert all(torch.equal(a, b) for a, b in zip(with_negative.maps, as_prompt.maps))
    torch.testing.assert_close(with_negative.all_logits(), as_prompt.all_logits(), atol=1e-5, rtol=1e-5)
    # Without one, the unconditional branch is cfg_uncond with each prompt's token length, as before.
    without = tiny_model.generate(cond, unconditional_only, seed=[1, 2, 3], decode=False)
    null = tiny_model.generate(tiny_model.null_condition(cond), SamplerConfig(cfg=1.0), seed=[1, 2, 3], decode=False)
    torch.testing.assert_close(without.all_logits(), null.all_logits(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(without.all_logits()[:, :1], with_negative.all_logits()[:, :1])


def test_negative_prompt_needs_guidance_and_a_batch_of_one_or_all(tiny_model):
    cond = random_condition(3)
    with pytest.raises(ConfigError, match="guidance"):
        tiny_model.generate(cond, SamplerConfig(cfg=1.0), seed=0, decode=False, negative=random_condition(1))
    with pytest.raises(ValueError, match="give 1"):
        tiny_model.generate(cond, SamplerConfig(cfg=3.0), seed=0, decode=False, negative=random_condition(2))


def test_negative_prompt_reaches_generation_through_the_api(tiny_text_model):
    from varerase import api
    from varerase.models.infinity.vae import BitwiseVAE, BitwiseVAEConfig

    tiny_text_model.vae = BitwiseVAE(BitwiseVAEConfig(bits=6, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, norm_groups=8)).eval()
    plain = api.generate(tiny_text_model, ["a red circle"], n=2, cfg=3.0)
    pushed = api.generate(tiny_text_model, ["a red circle"], n=2, cfg=3.0, negative_prompt="a blue square")
    direct = tiny_text_model.generate(
        tiny_text_model.encode_text(["a red circle"] * 2), SamplerConfig(cfg=3.0), seed=[0, 1], negative=tiny_text_model.encode_text(["a blue square"])
    )
    assert pushed.shape == plain.shape == (2, 3, 8, 8) and not torch.equal(pushed, plain)
    assert torch.equal(pushed, direct.images)


@pytest.mark.parametrize(
    ("name", "device", "expected"),
    [
        ("infinity-2b", "cuda", "bfloat16"), ("infinity-8b", "cuda:1", "bfloat16"),
        ("infinity-2b", "cpu", None), ("tiny", "cuda", None), ("runs/my-model", "cuda", None),
    ],
)
def test_official_models_default_to_bfloat16_autocast_on_cuda_only(name, device, expected):
    from varerase.models.registry import default_mixed_precision, resolve_mixed_precision

    assert default_mixed_precision(name, device) == expected
    assert resolve_mixed_precision(None, name, device) == expected
    assert resolve_mixed_precision("none", name, device) is None  # --mixed-precision none: float32
    assert resolve_mixed_precision("float16", name, device) == "float16"


def test_unknown_mixed_precision_is_refused_naming_the_choices():
    from varerase.models.registry import resolve_mixed_precision

    with pytest.raises(ConfigError, match="bfloat16, float16, none"):
        resolve_mixed_precision("fp8", "infinity-2b", "cuda")
