"""Official Infinity checkpoints: key layout, strict loading, presets."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import random_condition, tiny_transformer_config
from varerase.errors import CheckpointError
from varerase.models.base import SamplerConfig
from varerase.models.infinity.checkpoint import (
    infinity_2b_config,
    infinity_8b_config,
    load_official_transformer,
    our_key_to_official,
)
from varerase.models.infinity.model import InfinityModel
from varerase.models.infinity.transformer import InfinityTransformer


def _official_state(transformer):
    return {our_key_to_official(k, transformer.config): v.clone() for k, v in transformer.state_dict().items()}


def test_official_pth_in_block_chunks_layout_loads_and_matches(tiny_model, tmp_path):
    config = tiny_model.config
    state = _official_state(tiny_model.transformer)
    assert any(k.startswith("block_chunks.1.module.0.") for k in state)  # depth 2, chunks → 1 block per chunk
    torch.save(state, tmp_path / "infinity_tiny.pth")
    fresh = InfinityTransformer(config)
    load_official_transformer(fresh, tmp_path / "infinity_tiny.pth")
    loaded = InfinityModel(fresh, None, None).eval()
    cond = random_condition(2)
    maps = tiny_model.generate(cond, SamplerConfig(cfg=1.0), seed=0, decode=False).maps
    torch.testing.assert_close(loaded.teacher_forced_logits(cond, maps), tiny_model.teacher_forced_logits(cond, maps), atol=0, rtol=0)


def test_sharded_safetensors_with_index_load(tiny_model, tmp_path):
    state = _official_state(tiny_model.transformer)
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, names in shards.items():
        save_file({k: state[k].contiguous() for k in names}, tmp_path / name)
    index = {"weight_map": {k: name for name, names in shards.items() for k in names}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    fresh = InfinityTransformer(tiny_model.config)
    load_official_transformer(fresh, tmp_path)
    for k, v in tiny_model.transformer.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_official_checkpoint_with_renamed_or_reshaped_key_is_rejected(tiny_model, tmp_path):
    state = _official_state(tiny_model.transformer)
    state["block_chunks.0.module.0.sa.mat_qkv.weight_x"] = state.pop("block_chunks.0.module.0.sa.mat_qkv.weight")
    state["head.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        load_official_transformer(InfinityTransformer(tiny_model.config), tmp_path / "bad.pth")
    message = str(info.value)
    assert "blocks.0.sa.mat_qkv.weight" in message and "unexpected" in message and "head.weight" in message


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_official_transformer(InfinityTransformer(tiny_transformer_config()), tmp_path / "broken.pth")


@pytest.mark.parametrize(("config", "billions"), [(infinity_2b_config(), 2.205), (infinity_8b_config(), 8.376)])
def test_presets_have_the_official_parameter_counts(config, billions):
    with torch.device("meta"):
        transformer = InfinityTransformer(config)
    count = sum(p.numel() for p in transformer.parameters())
    assert abs(count / 1e9 - billions) < 0.01


def _write_shards(state, folder, suffix):
    keys = sorted(state)
    shards = {f"model-0000{i + 1}-of-00003{suffix}": keys[i::3] for i in range(3)}
    for name, names in shards.items():
        part = {k: state[k].contiguous() for k in names}
        save_file(part, folder / name) if suffix == ".safetensors" else torch.save(part, folder / name)
    index_name = "model.safetensors.index.json" if suffix == ".safetensors" else "pytorch_model.bin.index.json"
    (folder / index_name).write_text(json.dumps({"weight_map": {k: name for name, names in shards.items() for k in names}}))
    return folder / index_name


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_sharded_checkpoint_loads_one_shard_at_a_time(tiny_model, tmp_path, suffix, monkeypatch):
    import varerase.models.infinity.checkpoint as checkpoint

    index = _write_shards(_official_state(tiny_model.transformer), tmp_path, suffix)
    import weakref

    read, earlier = [], []
    original = checkpoint._read_shard

    def read_and_watch(shard):
        # When a shard is read, no tensor of the shards before it may still be alive.
        assert all(ref() is None for ref in earlier), "an earlier shard is still held in memory"
        part = original(shard)
        read.append(shard.name)
        earlier.extend(weakref.ref(t) for t in part.values())
        return part

    monkeypatch.setattr(checkpoint, "_read_shard", read_and_watch)
    fresh = InfinityTransformer(tiny_model.config)
    load_official_transformer(fresh, index)
    assert len(read) == len(set(read)) == 3
    for k, v in tiny_model.transformer.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_sharded_checkpoint_with_a_wrong_shape_is_refused_before_any_weight_is_written(tiny_model, tmp_path):
    state = _official_state(tiny_model.transformer)
    state["head.weight"] = torch.zeros(3, 3)
    _write_shards(state, tmp_path, ".safetensors")
    fresh = InfinityTransformer(tiny_model.config)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match="head.weight"):
        load_official_transformer(fresh, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize("saved_length", [5, 12])
@pytest.mark.parametrize("sharded", [False, True])
def test_cfg_uncond_of_another_length_is_fitted_as_the_official_loader_does(tiny_model, tmp_path, saved_length, sharded):
    """Official rule: keep the first min(T_saved, text_max_length) rows; pad a shorter one with the initial rows."""
    from varerase.models.infinity.transformer import initial_cfg_uncond

    config = tiny_model.config  # text_max_length 8
    state = _official_state(tiny_model.transformer)
    saved = torch.randn(saved_length, config.text_channels, generator=torch.Generator().manual_seed(1))
    state["cfg_uncond"] = saved
    if sharded:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
        source = tmp_path
    else:
        torch.save(state, tmp_path / "infinity.pth")
        source = tmp_path / "infinity.pth"
    fresh = InfinityTransformer(config)
    with pytest.warns(UserWarning, match=f"cfg_uncond has {saved_length} text positions but text_max_length is 8"):
        load_official_transformer(fresh, source)
    expected = saved[:8] if saved_length > 8 else torch.cat([saved, initial_cfg_uncond(8, config.text_channels)[saved_length:]])
    assert torch.equal(fresh.cfg_uncond.data, expected)
    others = {k: v for k, v in fresh.state_dict().items() if k != "cfg_uncond"}
    assert all(torch.equal(v, tiny_model.transformer.state_dict()[k]) for k, v in others.items())
