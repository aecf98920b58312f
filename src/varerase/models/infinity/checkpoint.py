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
import warnings
from pathlib import Path
from typing import Mapping, TypeVar

import torch

from varerase.errors import CheckpointError
from varerase.models.infinity.transformer import InfinityConfig, InfinityTransformer, initial_cfg_uncond
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


def official_state_to_ours(state: Mapping[str, V], config: InfinityConfig, source: str | Path = "the checkpoint") -> dict[str, V]:
    """An official state dict (or its key → shape map, or one shard of it) under our key names, without the non-weight buffers.

    ``cfg_uncond`` of another length than ``config.text_max_length`` is fitted as the official
    loader does (:func:`fitted_cfg_uncond`; a shape is fitted the same way); ``source`` names the file in the warning.
    """
    ours = {official_key_to_ours(k, config): v for k, v in state.items() if k not in _NON_WEIGHT_KEYS}
    if "cfg_uncond" in ours:
        saved = ours["cfg_uncond"]
        ours["cfg_uncond"] = fitted_cfg_uncond(saved, config, source) if torch.is_tensor(saved) else _fitted_shape(saved, config)
    return ours


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


def fitted_cfg_uncond(saved: torch.Tensor, config: InfinityConfig, source: str | Path) -> torch.Tensor:
    """A checkpoint's ``cfg_uncond`` ``[T_saved, C_text]`` fitted to ``config.text_max_length`` rows, as the official loader does.

    The official ``Infinity.load_state_dict`` keeps the first ``min(T_saved, text_max_length)``
    rows and pads a shorter one with the model's initial rows (:func:`initial_cfg_uncond`); a
    warning says so. Other shapes are left for the strict check to report.
    """
    wanted = config.text_max_length
    if saved.ndim != 2 or saved.shape[0] == wanted or saved.shape[1] != config.text_channels:
        return saved
    how = "padded with the initial rows" if saved.shape[0] < wanted else f"cut to its first {wanted} rows"
    warnings.warn(
        f"{source}: cfg_uncond has {saved.shape[0]} text positions but text_max_length is {wanted}; {how}, as the official loader does",
        stacklevel=3,
    )
    if saved.shape[0] > wanted:
        return saved[:wanted]
    return torch.cat([saved, initial_cfg_uncond(wanted, config.text_channels)[saved.shape[0]:].to(saved.dtype)])


def _fitted_shape(shape: torch.Size, config: InfinityConfig) -> torch.Size:
    fits = len(shape) == 2 and shape[1] == config.text_channels
    return torch.Size([config.text_max_length, shape[1]]) if fits else shape


def load_official_transformer(transformer: InfinityTransformer, path: str | Path) -> None:
    """Load official Infinity weights into ``transformer`` strictly (see module docstring); shards one at a time.

    ``cfg_uncond`` of another length than ``text_max_length`` is fitted as the official loader does (:func:`fitted_cfg_uncond`).
    """
    config = transformer.config
    shards = official_shards(path)
    if shards is None:
        load_strict(transformer, official_state_to_ours(read_official_state_dict(path), config, path), path)
        return
    check_strict(transformer, official_state_to_ours({k: s for shard in shards for k, s in _shard_shapes(shard).items()}, config, path), path)
    for shard in shards:
        part = official_state_to_ours(_read_shard(shard), config, shard)
        transformer.load_state_dict(part, strict=False)  # the union of the shards was checked above
        del part  # this shard's tensors go before the next one is read
