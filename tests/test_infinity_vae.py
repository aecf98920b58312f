"""Infinity's bitwise multi-scale VAE: shapes, quantization, official key layout, save/load, training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from varerase.errors import CheckpointError, ConfigError
from varerase.models.infinity.bsq import bits_to_codes, multiscale_quantize, upsample
from varerase.models.infinity.vae import (
    VAE_PRESETS,
    BitwiseVAE,
    BitwiseVAEConfig,
    load_official_vae_checkpoint,
    official_state_dict,
)

TOKENIZER_SCHEDULE = [(1, 1), (2, 2), (4, 4), (8, 8)]


def _tiny_vae(seed: int = 0) -> BitwiseVAE:
    torch.manual_seed(seed)
    return BitwiseVAE(VAE_PRESETS["tiny"]()).eval()


def _images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_tiny_vae_shapes_bits_and_reconstruct():
    vae = _tiny_vae()
    images = _images()
    assert vae.downsample_factor == 4
    with torch.no_grad():
        latent = vae.encode_latent(images)
        maps = vae.encode_maps(images, TOKENIZER_SCHEDULE)
        decoded = vae.decode_maps(maps)
        reconstruction, quantized = vae(images, TOKENIZER_SCHEDULE)
    assert latent.shape == (2, 12, 8, 8) and latent.dtype == torch.float32
    assert [tuple(m.shape) for m in maps] == [(2, h, w, 12) for h, w in TOKENIZER_SCHEDULE]
    assert all(m.dtype == torch.long and set(m.unique().tolist()) <= {0, 1} for m in maps)
    assert decoded.shape == (2, 3, 32, 32) and decoded.abs().max() <= 1
    torch.testing.assert_close(decoded, vae.reconstruct(images, TOKENIZER_SCHEDULE), atol=0, rtol=0)
    # The training pass quantizes exactly as the token path does.
    torch.testing.assert_close(quantized, vae.maps_to_latent(maps), atol=1e-6, rtol=0)
    torch.testing.assert_close(reconstruction.clamp(-1, 1), decoded, atol=1e-5, rtol=0)


def test_image_size_must_be_a_multiple_of_the_downsample_factor():
    with pytest.raises(ValueError, match="multiple"):
        _tiny_vae().encode_latent(torch.zeros(1, 3, 30, 32))


def test_bits_codes_round_trip_and_quantizing_a_sum_of_codes_recovers_it():
    generator = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (2, 8, 8, 12), generator=generator)
    codes = bits_to_codes(bits)
    assert torch.equal((codes > 0).long().permute(0, 2, 3, 1), bits)
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(2, 8, 8))

    coarse_bits = torch.randint(0, 2, (2, 1, 1, 12), generator=generator)
    latent = upsample(bits_to_codes(coarse_bits), (8, 8)) + codes
    quantized, recovered = multiscale_quantize(latent, [(1, 1), (8, 8)])
    assert torch.equal(recovered[0], coarse_bits) and torch.equal(recovered[1], bits)
    torch.testing.assert_close(quantized, latent, atol=1e-6, rtol=0)


def test_official_key_layout_of_the_d32_tokenizer():
    with torch.device("meta"):
        vae = BitwiseVAE(VAE_PRESETS["infinity-d32"]())
    state = official_state_dict(vae)
    # 270 keys, as the official AutoEncoder built by vae_model() has (checked against its code).
    assert len(state) == 270
    for key in (
        "encoder.conv_in.conv.weight",
        "encoder.down.0.block.0.norm1.norm.weight",
        "encoder.down.1.block.0.nin_shortcut.conv.weight",
        "encoder.down.3.downsample.conv.conv.weight",
        "encoder.mid.block_2.conv2.conv.bias",
        "decoder.up.4.block.2.conv1.conv.weight",
        "decoder.up.1.upsample.conv.conv.weight",
        "decoder.norm_out.norm.bias",
        "quantizer.lfq.mask",
        "quantize.lfq.mask",
    ):
        assert key in state, key
    assert "encoder.down.4.downsample.conv.conv.weight" not in state
    assert "decoder.up.0.upsample.conv.conv.weight" not in state
    assert state["encoder.conv_out.conv.weight"].shape == (32, 512, 3, 3)


@pytest.mark.parametrize("name, bits, parameters", [("infinity-d32", 32, 110_118_051), ("infinity-d56-patchify", 14, 81_624_209)])
def test_official_sizes_on_the_meta_device(name, bits, parameters):
    # Counts measured on the official AutoEncoder with the same settings.
    with torch.device("meta"):
        vae = BitwiseVAE(VAE_PRESETS[name]())
    assert vae.config.bits == bits
    assert all(p.is_meta for p in vae.parameters())
    assert sum(p.numel() for p in vae.parameters()) == parameters


@pytest.mark.parametrize("layout", ["official", "unwrapped", "ema"])
def test_official_checkpoint_loads(tmp_path, layout):
    source = _tiny_vae(seed=0)
    if layout == "unwrapped":
        # The official loader also accepts plain nn.Conv2d / nn.GroupNorm key names.
        payload = {"vae": source.state_dict()}
    else:
        payload = {"ema" if layout == "ema" else "vae": official_state_dict(source)}
    torch.save(payload, tmp_path / "vae.pth")
    target = _tiny_vae(seed=1)
    load_official_vae_checkpoint(target, tmp_path / "vae.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_official_checkpoint_mismatches_are_named(tmp_path):
    source = _tiny_vae()
    renamed = official_state_dict(source)
    renamed["decoder.mid.block_1.conv1.conv.wieght"] = renamed.pop("decoder.mid.block_1.conv1.conv.weight")
    torch.save({"vae": renamed}, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError) as error:
        load_official_vae_checkpoint(_tiny_vae(), tmp_path / "renamed.pth")
    message = str(error.value)
    assert "1 missing keys: decoder.mid.block_1.conv1.weight" in message
    assert "1 unexpected keys: decoder.mid.block_1.conv1.conv.wieght" in message

    reshaped = official_state_dict(source)
    reshaped["encoder.conv_out.conv.weight"] = torch.zeros(5, 64, 3, 3)
    torch.save({"vae": reshaped}, tmp_path / "reshaped.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches: encoder\.conv_out\.weight: checkpoint \(5, 64, 3, 3\)"):
        load_official_vae_checkpoint(_tiny_vae(), tmp_path / "reshaped.pth")


def test_official_checkpoint_for_another_bit_count_or_without_weights_is_refused(tmp_path):
    state = official_state_dict(_tiny_vae())
    state["quantizer.lfq.mask"] = 2 ** torch.arange(31, -1, -1)
    torch.save({"vae": state}, tmp_path / "d32.pth")
    with pytest.raises(CheckpointError, match="32-bit tokenizer"):
        load_official_vae_checkpoint(_tiny_vae(), tmp_path / "d32.pth")
    torch.save({"optimizer": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="neither a 'vae' nor an 'ema'"):
        load_official_vae_checkpoint(_tiny_vae(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_official_vae_checkpoint(_tiny_vae(), tmp_path / "absent.pth")


def test_save_and_from_pretrained_round_trip(tmp_path):
    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["channel_mult"] == list(vae.config.channel_mult)
    loaded = BitwiseVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == vae.config
    images = _images()
    torch.testing.assert_close(loaded.reconstruct(images, TOKENIZER_SCHEDULE), vae.reconstruct(images, TOKENIZER_SCHEDULE), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="config.json"):
        BitwiseVAE.from_pretrained(tmp_path / "missing")


def test_config_rejects_group_counts_that_do_not_divide_the_widths():
    with pytest.raises(ConfigError, match="norm_groups"):
        BitwiseVAEConfig(bits=4, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, norm_groups=12)


def test_attention_in_mid_is_optional_and_runs():
    torch.manual_seed(0)
    config = BitwiseVAEConfig(bits=4, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4, attention_in_mid=True)
    vae = BitwiseVAE(config)
    assert "encoder.mid.attn_1.q.weight" in vae.state_dict() and "decoder.mid.attn_1.proj_out.bias" in vae.state_dict()
    reconstruction, _ = vae(torch.zeros(1, 3, 8, 8), [(1, 1), (4, 4)])
    assert reconstruction.shape == (1, 3, 8, 8)


def test_reconstruction_training_reduces_the_loss_through_the_quantizer():
    vae = _tiny_vae().train()
    # Smooth images, which a 12-bit 8×8 latent can represent far better than noise.
    coarse = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1
    images = F.interpolate(coarse, size=(32, 32), mode="bilinear")
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        reconstruction, _ = vae(images, TOKENIZER_SCHEDULE)
        loss = F.mse_loss(reconstruction, images)
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            # The encoder is only reachable through the straight-through quantizer.
            assert vae.encoder.conv_in.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
