"""Generation batches that fit: the per-image memory estimate, the batch it chooses, and batch-invariant images."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import random_condition, tiny_transformer_config
from varerase.models import memory
from varerase.models.base import SamplerConfig
from varerase.models.infinity.checkpoint import infinity_2b_config
from varerase.models.infinity.model import InfinityModel
from varerase.models.infinity.transformer import InfinityTransformer
from varerase.models.infinity.vae import BitwiseVAE, tiny_vae_config

SCHEDULE = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)]
GiB = 2**30


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages that ops create while the mode is on (tracemalloc for tensors).

    Every op's output is counted once per storage (views share their base's) from the op that
    creates it until the last tensor viewing it is freed; storages that existed before (weights,
    buffers, the inputs) are not counted.
    """

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.existing = {t.untyped_storage()._cdata for t in existing}
        self.views: dict[int, int] = {}  # storage → live tensors viewing it
        self.sizes: dict[int, int] = {}
        self.tracked: set[int] = set()
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and id(tensor) not in self.tracked:
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.existing:
            return
        if key not in self.views:
            self.views[key], self.sizes[key] = 0, storage.nbytes()
            self.now += self.sizes[key]
            self.peak = max(self.peak, self.now)
        self.views[key] += 1
        self.tracked.add(id(tensor))
        weakref.finalize(tensor, self._release, id(tensor), key)

    def _release(self, tensor_id: int, key: int) -> None:
        self.tracked.discard(tensor_id)
        self.views[key] -= 1
        if self.views[key] == 0:
            self.now -= self.sizes.pop(key)
            del self.views[key]


def _model(autocast_dtype: str | None = None, vae: bool = False) -> InfinityModel:
    torch.manual_seed(0)
    config = tiny_transformer_config(depth=4, width=128, mlp_ratio=4.0, ffn_multiple=64, bits=12, schedule=SCHEDULE)
    return InfinityModel(InfinityTransformer(config), BitwiseVAE(tiny_vae_config()).eval() if vae else None, None, autocast_dtype).eval()


@pytest.mark.parametrize("autocast_dtype", [None, "bfloat16"])
@pytest.mark.parametrize("cfg", [3.0, 1.0])
def test_row_estimate_is_within_20_percent_of_what_a_cpu_generation_allocates(autocast_dtype, cfg):
    model = _model(autocast_dtype)
    rows = 3
    cond = random_condition(rows)
    tracker = LiveTensorBytes([*model.state_dict().values(), *model.transformer.buffers(), cond.features, cond.mask])
    with tracker:
        model.generate(cond, SamplerConfig(cfg=cfg), seed=list(range(rows)), decode=False)
    estimate = rows * model.generation_row_bytes(guided=cfg != 1.0, text_tokens=cond.features.shape[1])
    assert 0.8 < estimate / tracker.peak < 1.2, (estimate, tracker.peak)


def test_infinity_2b_at_1m_takes_at_most_8_images_per_pass_on_an_80_gb_device(monkeypatch):
    config = infinity_2b_config("1M")
    # bfloat16 autocast on CUDA (the default there): keys cached in float32, values in bfloat16.
    row = memory.generation_row_bytes(
        config.schedule, config.width, config.depth, config.bits, torch.bfloat16, key_dtype=torch.float32, ffn_hidden=config.ffn_hidden,
        text_tokens=config.text_max_length, text_channels=config.text_channels,
    )
    kv_cache = 2 * config.depth * 10_521 * config.width * (4 + 2)  # both branches, every block, float32 keys + bfloat16 values
    assert kv_cache < row < 1.2 * kv_cache  # 8.3 GB of cache, 9.4 GB in all per image
    total, weights = 80 * GiB, 10 * GiB  # transformer in bfloat16 4.1 GiB, Flan-T5-XL encoder 4.6 GiB, VAE
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total, total))
    assert memory.generation_batch_size(64, row, "cuda") == 8  # an empty device
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total - weights, total))
    assert memory.generation_batch_size(64, row, "cuda") == 7  # with the model loaded
    assert memory.generation_batch_size(4, row, "cuda") == 4  # never more than asked
    assert memory.generation_batch_size(64, 100 * GiB, "cuda") == 1  # one that cannot fit still tries alone


def test_off_cuda_every_pass_takes_the_requested_batch():
    assert memory.generation_batch_size(64, 10**15, "cpu") == 64
    assert _model().generation_batch_size(64) == 64


def test_same_seeds_give_bit_identical_images_whatever_batch_the_memory_allows(monkeypatch):
    model = _model(vae=True)
    cond = random_condition(5)
    sampler = SamplerConfig(cfg=3.0, top_p=0.9)
    seeds = [3, 1, 4, 1, 5]
    row = model.generation_row_bytes(text_tokens=cond.features.shape[1])
    passes = []
    sample = model._sample
    monkeypatch.setattr(model, "_sample", lambda cond, *args: passes.append(cond.batch_size) or sample(cond, *args))
    results = {}
    for rows in (1, 3, 5):
        monkeypatch.setattr(memory, "device_free_bytes", lambda device, rows=rows: rows * row)  # a device with room for `rows`
        passes.clear()
        results[rows] = model.generate(cond, sampler, seed=seeds)
        assert passes == {1: [1] * 5, 3: [3, 2], 5: [5]}[rows]
    for rows in (1, 3):
        assert torch.equal(results[rows].images, results[5].images)
        assert all(torch.equal(a, b) for a, b in zip(results[rows].maps, results[5].maps))


def test_the_vae_decodes_a_fixed_number_of_pixels_per_call():
    assert memory.decode_batch_size(1024 * 1024) == 1
    assert memory.decode_batch_size(32 * 32) == 1024
    assert memory.decode_batch_size(2048 * 2048) == 1


@pytest.mark.parametrize(
    "autocast_dtype, rows, schedule, checkpointing",
    [(None, 2, SCHEDULE, False), (None, 4, SCHEDULE + [(12, 12)], False), ("bfloat16", 2, SCHEDULE, False), (None, 2, SCHEDULE, True)],
)
def test_teacher_forcing_estimate_is_within_20_percent_of_what_a_cpu_step_keeps(autocast_dtype, rows, schedule, checkpointing):
    """Without checkpointing: what the forward keeps for backward; with it: the peak during backward (gradients aside)."""
    torch.manual_seed(0)
    config = tiny_transformer_config(depth=4, width=128, mlp_ratio=4.0, ffn_multiple=64, bits=12, schedule=schedule)
    model = InfinityModel(InfinityTransformer(config), None, None, autocast_dtype).eval()
    model.set_activation_checkpointing(checkpointing)
    cond = random_condition(rows)
    maps = model.generate(cond, SamplerConfig(cfg=1.0), seed=list(range(rows)), decode=False).maps
    for parameter in model.parameters():  # gradients flow through every activation, as they do to an edit's deltas
        parameter.requires_grad_(True)
    tracker = LiveTensorBytes([*model.state_dict().values(), *model.transformer.buffers(), cond.features, cond.mask, *maps])
    with tracker:
        logits = model.teacher_forced_logits(cond, maps)
        kept = tracker.now - logits.numel() * logits.element_size()
        logits.float().square().mean().backward()
    gradients = sum(p.numel() * p.element_size() for p in model.parameters())
    measured = tracker.peak - gradients if checkpointing else kept
    dtype = getattr(torch, autocast_dtype) if autocast_dtype else torch.float32
    estimate = memory.teacher_forcing_bytes(schedule, config.width, config.depth, rows, dtype, ffn_hidden=config.ffn_hidden, checkpointing=checkpointing)
    assert 0.8 < estimate / measured < 1.2, (estimate, measured)
