"""Official Infinity transformer checkpoints and presets.

Infinity-2B ships as one ``.pth`` state dict (``infinity_2b_reg.pth``); Infinity-8B as sharded
safetensors with ``model.safetensors.index.json``. Both store blocks as
``block_chunks.{c}.module.{j}.*``; we keep a flat ``blocks.{i}`` with ``i = c·(depth/chunks) + j``.
Loading is strict: any missing, unexpected or mis-shaped key is an error that lists them. A
sharded checkpoint (a folder, ``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``)
is checked against the model from the shards' key lists and shapes first, then loaded one shard
at a time, so peak memory is the model plus one shard, not the model plus the whole checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, TypeVar

import torch

from varerase.errors import CheckpointError
from varerase.models.infinity.transformer import InfinityConfig, InfinityTransformer
from varerase.models.loading import check_strict, load_strict, read_json_config, read_safetensors, safetensors_shapes
from varerase.models.schedule import infinity_schedule

# Buffers some official checkpoints carry that are not weights (the official loader drops them too).
_NON_WEIGHT_KEYS = {"lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen"}
_CHUNKED = re.compile(r"^block_chunks\.(\d+)\.module\.(\d+)\.(.*)$")
V = TypeVar("V")


def infinity_2b_config(pixels: str = "1M", aspect_ratio: float = 1.0) -> InfinityConfig:
    """Infinity-2B: depth 32, width 2048, 16 heads, Flan-T5-XL text (2048), 32-bit tokens."""
    return InfinityConfig(
        depth=32, width=2048, num_heads=16, text_channels=2048, text_max_length=512, bits=32,
        schedule=infinity_schedule(pixels, aspect_ratio), block_chunks=8,
    )


def infinity_8b_config(pixels: str = "1M", aspect_ratio: float = 1.0) -> InfinityConfig:
    """Infinity-8B: depth 40, width 3584, 28 heads, 56-bit tokens (2×2 patches of a 14-bit, stride-8 tokenizer)."""
    return InfinityConfig(
        depth=40, width=3584, num_heads=28, text_channels=2048, text_max_length=512, bits=56, patchify=True,
        schedule=infinity_schedule(pixels, aspect_ratio), block_chunks=8,
    )


PRESETS = {"infinity-2b": infinity_2b_config, "infinity-8b": infinity_8b_config}


def official_key_to_ours(key: str, config: InfinityConfig) -> str:
    """Map an official state-dict key to ours (``block_chunks.c.module.j`` → ``blocks.i``)."""
    match = _CHUNKED.match(key)
    if match is None:
        return key
    chunk, index, rest = int(match[1]), int(match[2]), match[3]
    return f"blocks.{chunk * (config.depth // config.block_chunks) + index}.{rest}"


def official_state_to_ours(state: Mapping[str, V], config: InfinityConfig) -> dict[str, V]:
    """An official state dict (or its key → shape map, or one shard of it) under our key names, without the non-weight buffers."""
    return {official_key_to_ours(k, config): v for k, v in state.items() if k not in _NON_WEIGHT_KEYS}


def our_key_to_official(key: str, config: InfinityConfig) -> str:
    """Inverse of :func:`official_key_to_ours` (used to export and in tests)."""
    match = re.match(r"^blocks\.(\d+)\.(.*)$", key)
    if match is None or config.block_chunks <= 1:
        return key
    per_chunk = config.depth // config.block_chunks
    i = int(match[1])
    return f"block_chunks.{i // per_chunk}.module.{i % per_chunk}.{match[2]}"


def official_shards(path: str | Path) -> list[Path] | None:
    """The shard files of a sharded official checkpoint (a folder or an index file), or None for a single file.

    An index (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``) names its shards in
    ``weight_map``; a folder without one uses every ``*.safetensors`` file in it.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not (path.is_dir() or path.name.endswith(".index.json")):
        return None
    indexes = [path] if not path.is_dir() else [path / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json") if (path / n).exists()]
    if not indexes:
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise CheckpointError(f"{path} holds neither an index (model.safetensors.index.json, pytorch_model.bin.index.json) nor *.safetensors files")
        return shards
    weight_map = read_json_config(indexes[0]).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{indexes[0]} has no weight_map")
    shards = sorted({indexes[0].parent / str(name) for name in weight_map.values()})
    absent = [s.name for s in shards if not s.exists()]
    if absent:
        raise CheckpointError(f"{indexes[0]} names shard(s) that are not there: {', '.join(absent)}")
    return shards


def _read_torch_file(path: Path, mmap: bool = False) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # a truncated or non-tensor pickle: say which file, not where torch failed
        raise CheckpointError(f"could not read {path} as a weights-only PyTorch checkpoint: {error}") from error


def _read_shard(shard: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(shard) if shard.suffix == ".safetensors" else _read_torch_file(shard)


def _shard_shapes(shard: Path) -> dict[str, torch.Size]:
    """Key → shape of one shard without reading its tensors (safetensors header, or a memory-mapped .bin)."""
    if shard.suffix == ".safetensors":
        return safetensors_shapes(shard)
    return {k: v.shape for k, v in _read_torch_file(shard, mmap=True).items()}


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a whole official checkpoint into memory: a ``.pth``/``.safetensors`` file or the shards of a sharded one."""
    path = Path(path)
    shards = official_shards(path)
    if shards is not None:
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_read_shard(shard))
        return state
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    state = _read_torch_file(path)
    # Full training checkpoints nest the model under trainer → gpt_fsdp (the released slim files do not).
    if isinstance(state, dict) and "trainer" in state:
        state = state["trainer"].get("gpt_fsdp", state["trainer"])
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state


def load_official_transformer(transformer: InfinityTransformer, path: str | Path) -> None:
    """Load official Infinity weights into ``transformer`` strictly (see module docstring); shards one at a time."""
    shards = official_shards(path)
    if shards is None:
        load_strict(transformer, official_state_to_ours(read_official_state_dict(path), transformer.config), path)
        return
    shapes = {k: shape for shard in shards for k, shape in official_state_to_ours(_shard_shapes(shard), transformer.config).items()}
    check_strict(transformer, shapes, path)
    for shard in shards:
        part = official_state_to_ours(_read_shard(shard), transformer.config)
        transformer.load_state_dict(part, strict=False)  # the union of the shards was checked above
        del part  # this shard's tensors go before the next one is read
