"""Teacher forcing's attention backends (models/attention.py): block-sparse FlexAttention against the dense-mask SDPA path.

On CPU, torch (2.13) runs FlexAttention's unfused eager reference for forward passes, and its public
``flex_attention`` refuses inputs that require grad (a device check, ``_validate_device``). The
gradient tests lift that one check so that torch's eager FlexAttention backward runs: they prove that
our block mask and plumbing give the SDPA path's gradients; the fused CUDA kernels' numerics are
torch's to test. Measured here in float32 (the two paths sum in different orders), as a fraction of
the tensor's largest entry: logits within 3.3e-7 (random models: 9.5e-7 on logits up to 3) and 4.3e-7 (the
built-in model: 9.5e-6 on logits up to 22, a few float32 steps), every weight's gradient within
1.1e-6 (1.2e-4 on gradients up to 120). The tolerance is 5e-6 of the largest entry for both.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex

from conftest import random_condition, tiny_transformer_config
from varerase import api
from varerase.errors import ConfigError
from varerase.models.attention import resolve_backend
from varerase.models.base import SamplerConfig
from varerase.models.infinity.model import InfinityModel
from varerase.models.infinity.transformer import InfinityConfig, InfinityTransformer
from varerase.models.registry import load_model
from varerase.models.schedule import infinity_schedule

TOLERANCE = 5e-6  # of the tensor's largest entry (module docstring)

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, what: str = "logits") -> None:
    gap, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert gap <= TOLERANCE * scale, f"{what}: differ by {gap:.2e}, more than {TOLERANCE:g} of their largest entry {scale:.2e}"


def _random_maps(model: InfinityModel, batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 2, (batch, h, w, model.bits), generator=g) for h, w in model.schedule]


def _infinity_shaped_model() -> InfinityModel:
    """Random Infinity at a small width: 32-bit tokens, the official 0.06M schedule for h/w = 2 (non-square, L = 451)."""
    torch.manual_seed(0)
    schedule = infinity_schedule("0.06M", 2.0)
    config = InfinityConfig(depth=2, width=128, num_heads=2, text_channels=256, text_max_length=8, bits=32, schedule=schedule, block_chunks=1)
    return InfinityModel(InfinityTransformer(config), vae=None, text_encoder=None).eval()


def _tiny_random_model() -> InfinityModel:
    torch.manual_seed(0)
    return InfinityModel(InfinityTransformer(tiny_transformer_config()), vae=None, text_encoder=None).eval()


def _logits_and_gradients(model: InfinityModel, backend: str, cond, maps) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Teacher-forced logits ``[B, L, d, 2]`` and the gradients of a fixed function of them with respect to every weight."""
    model.use_attention(backend)
    model.requires_grad_(True).zero_grad(set_to_none=True)
    logits = model.teacher_forced_logits(cond, maps)
    weights = torch.linspace(-1, 1, logits.numel()).view_as(logits)
    (logits * weights).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("build", [_tiny_random_model, _infinity_shaped_model], ids=["tiny", "infinity-shaped-non-square"])
def test_flex_attention_gives_the_sdpa_logits_and_gradients(build, monkeypatch):
    monkeypatch.setattr(torch_flex, "_validate_device", lambda *tensors: None)  # torch's CPU refusal of backward (module docstring)
    model = build()
    cond = random_condition(2, channels=model.config.text_channels, seed=1)
    maps = _random_maps(model, 2, seed=2)
    sdpa_logits, sdpa_grads = _logits_and_gradients(model, "sdpa", cond, maps)
    flex_logits, flex_grads = _logits_and_gradients(model, "flex", cond, maps)
    assert_close_to_scale(flex_logits, sdpa_logits)
    assert flex_grads.keys() == sdpa_grads.keys() and len(sdpa_grads) > 20
    for name, grad in sdpa_grads.items():
        assert_close_to_scale(flex_grads[name], grad, f"gradients of {name}")


def test_flex_attention_gives_the_builtin_models_logits():
    model = load_model("tiny")
    assert model.config.attention == "auto"  # the shipped config predates the setting: the default
    cond = model.encode_text(["a red circle on a blue background", "a green square"])
    maps = _random_maps(model, 2, seed=3)
    with torch.no_grad():
        sdpa = model.teacher_forced_logits(cond, maps)
        model.use_attention("flex")
        assert_close_to_scale(model.teacher_forced_logits(cond, maps), sdpa)


def test_flex_attention_after_a_confined_prefix_gives_the_sdpa_logits():
    # Queries P…L−1 against keys 0…L−1 (SACE with the adapted context of scales 0..1): a block mask that is not square.
    model = _infinity_shaped_model()
    cond = random_condition(2, channels=model.config.text_channels, seed=4)
    maps = _random_maps(model, 2, seed=5)
    from varerase.models.base import ScaleGate

    # A gate with the model's own weights and the adapted context: a square block-causal pass over
    # scales 0..1, then the later positions against all keys — the non-square mask.
    gate = ScaleGate(last_scale=1, run=lambda name, *args: getattr(model, name)(*args), adapted_context=True)
    with torch.no_grad():
        model.use_attention("sdpa")
        sdpa = model.teacher_forced_logits(cond, maps, gate)
        model.use_attention("flex")
        assert_close_to_scale(model.teacher_forced_logits(cond, maps, gate), sdpa)


def test_flex_attention_under_bfloat16_autocast_is_as_close_to_float32_as_sdpa():
    # The cast to the autocast dtype that FlexAttention needs (SDPA casts by itself), as on CUDA.
    # Measured: both max 1.3e-2 (mean 2.3e-3) from float32 on logits up to 3.
    reference = _infinity_shaped_model()
    cond = random_condition(2, channels=reference.config.text_channels, seed=1)
    maps = _random_maps(reference, 2, seed=2)
    model = _infinity_shaped_model()
    model.use_mixed_precision("bfloat16")
    errors = {}
    with torch.no_grad():
        exact = reference.teacher_forced_logits(cond, maps)
        for backend in ("sdpa", "flex"):
            model.use_attention(backend)
            errors[backend] = (model.teacher_forced_logits(cond, maps) - exact).abs()
    summary = {backend: f"max {e.max():.2e}, mean {e.mean():.2e}" for backend, e in errors.items()}
    assert errors["flex"].max() <= 1.25 * errors["sdpa"].max() and errors["flex"].mean() <= 1.1 * errors["sdpa"].mean(), summary


def test_generation_does_not_depend_on_the_attention_backend():
    # KV-cached sampling attends to every cached key: no mask, so plain SDPA whatever the setting.
    model = _tiny_random_model()
    cond = random_condition(2, seed=6)
    sdpa = model.generate(cond, SamplerConfig(cfg=2.0), seed=[0, 1], decode=False)
    model.use_attention("flex")
    flex = model.generate(cond, SamplerConfig(cfg=2.0), seed=[0, 1], decode=False)
    assert all(torch.equal(a, b) for a, b in zip(sdpa.maps, flex.maps))
    torch.testing.assert_close(flex.all_logits(), sdpa.all_logits(), atol=0, rtol=0)


def test_flex_attention_block_mask_is_built_once_per_device_and_length():
    model = _tiny_random_model()
    model.use_attention("flex")
    cond, maps = random_condition(2), _random_maps(model, 2, seed=0)
    with torch.no_grad():
        model.teacher_forced_logits(cond, maps)
        first = model.transformer.block_causal.block_mask(model.num_tokens, model.num_tokens, model.device)
        model.teacher_forced_logits(cond, maps)
    assert model.transformer.block_causal.block_mask(model.num_tokens, model.num_tokens, model.device) is first


def test_flex_attention_in_a_gradient_pass_on_cpu_says_to_use_sdpa():
    model = _tiny_random_model().requires_grad_(True)
    model.use_attention("flex")
    with pytest.raises(ConfigError, match="no backward|backward.*CPU") as caught:
        model.teacher_forced_logits(random_condition(1), _random_maps(model, 1, seed=0)).sum().backward()
    assert "'sdpa'" in str(caught.value)


def test_auto_attention_is_flex_on_cuda_with_triton_and_sdpa_elsewhere(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: object() if name == "triton" else None)
    assert resolve_backend("auto", torch.device("cuda")) == "flex"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None)
    assert resolve_backend("auto", torch.device("cuda")) == "sdpa"
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert resolve_backend("flex", torch.device("cpu")) == "flex"


def test_unknown_attention_backend_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="auto, sdpa, flex"):
        api.ModelOptions(attention="fast")
    with pytest.raises(ValueError, match="auto, sdpa, flex"):
        InfinityConfig(attention="fast")


def test_attention_model_option_reaches_the_loaded_model():
    model = api.resolve_model("tiny", options={"attention": "sdpa"})
    assert model.config.attention == "sdpa"
