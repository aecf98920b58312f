"""Activation checkpointing of Infinity's blocks: same loss, gradients and samples, recomputed in backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import random_condition, tiny_transformer_config
from varerase.edits.delta import EditConfig, ParameterEdit
from varerase.edits.edited_model import EditedModel
from varerase.errors import ConfigError
from varerase.models.base import SamplerConfig, ScaleWiseModel
from varerase.models.infinity.model import InfinityModel
from varerase.models.infinity.transformer import InfinityTransformer

GROUPS = ["self_attn", "cross_attn", "ffn", "norms"]


def _edited(model: InfinityModel, lora_rank: int, freeze_base: bool = True) -> EditedModel:
    """``model`` (frozen unless told) seen through an edit whose every delta (LoRA: A and B) is non-zero."""
    model.requires_grad_(not freeze_base)
    edit = ParameterEdit(model, EditConfig(groups=GROUPS, lora_rank=lora_rank))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in edit.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.01)
    return EditedModel(model, edit)


def _maps(model: InfinityModel) -> list[torch.Tensor]:
    return model.generate(random_condition(2), SamplerConfig(cfg=1.0), seed=0, decode=False).maps


def _loss_and_grads(edited: EditedModel, maps: list[torch.Tensor], checkpointing: bool, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Teacher-forced bit cross-entropy on ``maps`` and the gradient of every edit parameter."""
    edited.set_activation_checkpointing(checkpointing)
    edited.edit.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    logits = edited.teacher_forced_logits(random_condition(2), maps)
    targets = torch.cat([m.flatten(1, 2) for m in maps], dim=1).long()
    loss = F.cross_entropy(logits.reshape(-1, 2), targets.reshape(-1))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in edited.edit.parameters()]


def _assert_same_loss_and_grads(edited: EditedModel, maps: list[torch.Tensor]) -> None:
    loss_off, grads_off = _loss_and_grads(edited, maps, checkpointing=False)
    loss_on, grads_on = _loss_and_grads(edited, maps, checkpointing=True)
    torch.testing.assert_close(loss_on, loss_off, atol=1e-6, rtol=0)
    assert len(grads_on) == len(grads_off) > 0 and any(off.abs().max() > 0 for off in grads_off)
    for on, off in zip(grads_on, grads_off):
        torch.testing.assert_close(on, off, atol=1e-6, rtol=1e-5)


# A plain block checkpoint recomputes with the base weights: with a frozen base it fails loudly
# (fewer tensors saved), with a trainable one it silently returns wrong gradients.
@pytest.mark.parametrize("freeze_base", [True, False])
def test_checkpointing_keeps_loss_and_gradients_of_full_deltas(tiny_model, freeze_base):
    _assert_same_loss_and_grads(_edited(tiny_model, lora_rank=0, freeze_base=freeze_base), _maps(tiny_model))


def test_checkpointing_keeps_loss_and_gradients_of_lora_deltas(tiny_model):
    _assert_same_loss_and_grads(_edited(tiny_model, lora_rank=2), _maps(tiny_model))


def test_checkpointing_replays_drop_path_noise_in_training_mode():
    torch.manual_seed(0)
    model = InfinityModel(InfinityTransformer(tiny_transformer_config(drop_path_rate=0.5)), vae=None, text_encoder=None).eval()
    maps = _maps(model)
    edited = _edited(model.train(), lora_rank=0)
    _assert_same_loss_and_grads(edited, maps)


def test_checkpointing_leaves_forward_logits_and_sampling_unchanged(tiny_model):
    edited = _edited(tiny_model, lora_rank=0)
    cond, maps = random_condition(2), _maps(tiny_model)
    sampler = SamplerConfig(cfg=3.0)
    outputs = {}
    for checkpointing in (False, True):
        edited.set_activation_checkpointing(checkpointing)
        logits = edited.teacher_forced_logits(cond, maps)
        with torch.no_grad():
            generation = edited.generate(cond, sampler, seed=[4, 5], decode=False)
        outputs[checkpointing] = (logits.detach(), generation)
    (logits_off, gen_off), (logits_on, gen_on) = outputs[False], outputs[True]
    torch.testing.assert_close(logits_on, logits_off, atol=0, rtol=0)
    for on, off in zip(gen_on.maps, gen_off.maps):
        assert torch.equal(on, off)
    torch.testing.assert_close(gen_on.all_logits(), gen_off.all_logits(), atol=0, rtol=0)


def _count_block_calls(model: InfinityModel) -> list[int]:
    calls = [0]
    for block in model.transformer.blocks:
        block.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("checkpointing", [False, True])
def test_checkpointing_runs_every_block_forward_again_in_backward(tiny_model, checkpointing):
    edited = _edited(tiny_model, lora_rank=0)
    maps = _maps(tiny_model)
    depth = len(tiny_model.transformer.blocks)
    calls = _count_block_calls(tiny_model)
    edited.set_activation_checkpointing(checkpointing)
    logits = edited.teacher_forced_logits(random_condition(2), maps)
    assert calls[0] == depth
    logits.square().mean().backward()
    assert calls[0] == (2 * depth if checkpointing else depth)
    # Sampling under no_grad never checkpoints: one call per block and scale.
    calls[0] = 0
    with torch.no_grad():
        edited.generate(random_condition(2), SamplerConfig(cfg=1.0), seed=0, decode=False)
    assert calls[0] == depth * len(tiny_model.schedule)


def test_default_set_activation_checkpointing_refuses_to_turn_on(tiny_model):
    ScaleWiseModel.set_activation_checkpointing(tiny_model, False)
    with pytest.raises(ConfigError, match="does not support activation checkpointing"):
        ScaleWiseModel.set_activation_checkpointing(tiny_model, True)
