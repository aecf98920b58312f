"""Model names → loaders: ``tiny`` (shipped weights), ``infinity-2b`` / ``infinity-8b`` (official checkpoints), or a folder.

Official weights come from a local path or the Hugging Face Hub (``FoundationVision/Infinity``,
``google/flan-t5-xl``); hub downloads go through ``huggingface_hub`` and its cache.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import torch

from varerase.errors import ConfigError
from varerase.models.base import SamplerConfig, ScaleWiseModel

TINY_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "tiny"
INFINITY_HUB_REPO = "FoundationVision/Infinity"


@dataclass(frozen=True)
class OfficialFiles:
    """Default hub file names of an official model."""

    transformer: str
    vae: str
    text_encoder: str = "google/flan-t5-xl"


OFFICIAL = {
    "infinity-2b": OfficialFiles("infinity_2b_reg.pth", "infinity_vae_d32reg.pth"),
    "infinity-8b": OfficialFiles("infinity_8b_weights", "infinity_vae_d56_f8_14_patchify.pth"),
}
MODEL_NAMES = ("tiny", *OFFICIAL)
MIXED_PRECISIONS = ("bfloat16", "float16", "none")


def default_mixed_precision(name_or_path: str, device: str | torch.device) -> str | None:
    """The autocast dtype a model gets when none is asked for: ``bfloat16`` for ``infinity-2b`` /
    ``infinity-8b`` on CUDA (how the official inference runs their blocks), else None (float32:
    the tiny model, model folders, and every model on CPU)."""
    return "bfloat16" if name_or_path in OFFICIAL and torch.device(device).type == "cuda" else None


def resolve_mixed_precision(requested: str | None, name_or_path: str, device: str | torch.device) -> str | None:
    """``requested`` (``bfloat16``, ``float16``, ``none`` for float32, or None for :func:`default_mixed_precision`) → the autocast dtype, None for float32."""
    if requested is None:
        return default_mixed_precision(name_or_path, device)
    if requested not in MIXED_PRECISIONS:
        raise ConfigError(f"mixed precision must be one of {', '.join(MIXED_PRECISIONS)}, got {requested!r}")
    return None if requested == "none" else requested


def _hub_file(name: str) -> Path:
    """A file (or folder) of the official hub repository, downloaded into the hub cache."""
    from huggingface_hub import hf_hub_download, snapshot_download

    if name.endswith((".pth", ".safetensors")):
        return Path(hf_hub_download(INFINITY_HUB_REPO, name))
    return Path(snapshot_download(INFINITY_HUB_REPO, allow_patterns=[f"{name}/*"])) / name


def model_folder(name_or_path: object) -> Path | None:
    """The folder a model loads from, where its training records are: the shipped weights for
    ``tiny``, the folder itself for a path; None for the official models' names and for objects."""
    if name_or_path == "tiny":
        return TINY_WEIGHTS
    return Path(name_or_path) if isinstance(name_or_path, (str, Path)) and Path(name_or_path).is_dir() else None


def load_model(
    name_or_path: str = "tiny",
    *,
    checkpoint: str | None = None,
    vae: str | None = None,
    text_encoder: str | None = None,
    pixels: str = "1M",
    aspect_ratio: float = 1.0,
    device: str | torch.device = "cpu",
    autocast_dtype: str | None = None,
    attention: str | None = None,
) -> ScaleWiseModel:
    """Load a model by name (``tiny``, ``infinity-2b``, ``infinity-8b``) or from a folder written by ``save_pretrained``.

    For the official models ``checkpoint``, ``vae`` and ``text_encoder`` take local paths or hub
    ids (defaults: the official hub files); ``pixels``/``aspect_ratio`` pick the schedule.
    ``autocast_dtype``: ``bfloat16``/``float16`` autocast, ``none`` for float32, or None for the
    model's default (:func:`default_mixed_precision`: bfloat16 for the official models on CUDA).
    A folder saved with autocast keeps it (its linear weights were saved in that dtype).
    ``attention``: teacher forcing's self-attention backend (``auto``/``sdpa``/``flex``,
    :mod:`varerase.models.attention`), or None for the model's own (``auto`` unless saved otherwise).
    """
    from varerase.models.infinity.model import InfinityModel

    autocast_dtype = resolve_mixed_precision(autocast_dtype, name_or_path, device)
    path = Path(name_or_path)
    if name_or_path == "tiny":
        if not (TINY_WEIGHTS / "config.json").exists():
            raise ConfigError(f"the built-in tiny model's weights are missing from {TINY_WEIGHTS}; reinstall varerase or run `varerase train-tiny`")
        model = InfinityModel.from_pretrained(TINY_WEIGHTS, device=device)
    elif name_or_path in OFFICIAL:
        model = _load_official(name_or_path, checkpoint, vae, text_encoder, pixels, aspect_ratio, device)
    elif path.is_dir():
        model = InfinityModel.from_pretrained(path, device=device)
    else:
        near = difflib.get_close_matches(name_or_path, MODEL_NAMES, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"unknown model {name_or_path!r}; {hint}known: {', '.join(MODEL_NAMES)}, or a folder written by save_pretrained")
    if autocast_dtype is not None:
        model.use_mixed_precision(autocast_dtype)
    if attention is not None:
        model.use_attention(attention)
    return model


def _load_official(
    name: str, checkpoint: str | None, vae_path: str | None, text_encoder: str | None, pixels: str, aspect_ratio: float, device
) -> ScaleWiseModel:
    from varerase.models.infinity.checkpoint import PRESETS, load_official_transformer
    from varerase.models.infinity.model import InfinityModel
    from varerase.models.infinity.transformer import InfinityTransformer
    from varerase.models.infinity.vae import VAE_PRESETS, BitwiseVAE, load_official_vae_checkpoint
    from varerase.models.text import TextEncoder

    files = OFFICIAL[name]
    config = PRESETS[name](pixels, aspect_ratio)
    with torch.device(device):
        transformer = InfinityTransformer(config)
    load_official_transformer(transformer, Path(checkpoint) if checkpoint else _hub_file(files.transformer))
    vae = BitwiseVAE(VAE_PRESETS["infinity-d56-patchify" if config.patchify else "infinity-d32"]())
    load_official_vae_checkpoint(vae, Path(vae_path) if vae_path else _hub_file(files.vae))
    encoder = TextEncoder.from_pretrained("t5", text_encoder or files.text_encoder, max_length=config.text_max_length, device=device)
    # The official inference defaults (tools/run_infinity.py and its notebooks).
    sampler = SamplerConfig(cfg=3.0, temperature=1.0 if config.patchify else 0.5, top_k=900, top_p=0.97)
    return InfinityModel(transformer, vae.to(device), encoder, default_sampler=sampler).eval().requires_grad_(False)
