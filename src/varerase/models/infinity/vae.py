"""Infinity's multi-scale bitwise VAE: a Flux-style convolutional autoencoder around BSQ.

The encoder maps images ``[B, 3, H, W]`` in ``[-1, 1]`` to a continuous latent ``[B, d, H/f, W/f]``
(``d`` = bits per tokenizer position, ``f = 2^(len(channel_mult) - 1)``); there is no
``quant_conv``, the encoder's last conv emits exactly ``d`` channels. The latent is quantized
scale by scale into bits (:mod:`varerase.models.infinity.bsq`, no learned parameters) and the
decoder maps the summed codes back to pixels.

Module names follow the official ``flux_vqgan.py`` without its ``Conv``/``Normalize`` wrappers,
so an official key such as ``encoder.down.0.block.0.conv1.conv.weight`` is our
``encoder.down.0.block.0.conv1.weight``; checkpoints in either spelling load.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from varerase.config import dataclass_from_dict
from varerase.errors import CheckpointError, ConfigError
from varerase.io import atomic_save_safetensors, atomic_write_json
from varerase.models.infinity.bsq import Schedule, bits_to_codes, multiscale_quantize, upsample
from varerase.models.loading import load_pretrained_module, load_strict, read_json_config, read_safetensors

_NORM_EPS = 1e-6
# The official quantizer registers the MSB-first bit weights ``2^(d-1) … 1`` as a buffer, saved
# twice because the quantizer is reachable as both ``quantizer`` and ``quantize``.
_QUANTIZER_BUFFERS = ("quantizer.lfq.mask", "quantize.lfq.mask")
_CONV_NAMES = {"conv_in", "conv_out", "conv1", "conv2", "nin_shortcut", "q", "k", "v", "proj_out", "conv"}
_NORM_NAMES = {"norm1", "norm2", "norm_out", "norm"}
_WRAPPED = re.compile(r"^(?P<module>.*\.(?P<name>[^.]+))\.(?P<wrapper>conv|norm)\.(?P<param>weight|bias)$")


@dataclass
class BitwiseVAEConfig:
    """Architecture of a :class:`BitwiseVAE`.

    ``bits``: latent channels = bits per tokenizer position (``codebook_dim``). ``channel_mult``:
    width of each resolution level as a multiple of ``base_channels``; every level but the last
    halves the resolution. ``norm_groups``: GroupNorm groups (must divide every width).
    ``attention_in_mid``: a single-head spatial self-attention between the two mid ResNet blocks
    (the released Infinity tokenizers are built without it).
    """

    bits: int = 32
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    attention_in_mid: bool = False
    norm_groups: int = 32

    def __post_init__(self) -> None:
        # JSON round trips turn the tuple into a list.
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        if self.bits < 1 or self.base_channels < 1 or self.num_res_blocks < 1 or not self.channel_mult:
            raise ConfigError(f"invalid VAE config: {self}")
        for width in {self.base_channels * m for m in self.channel_mult}:
            if width % self.norm_groups:
                raise ConfigError(f"norm_groups={self.norm_groups} does not divide channel width {width}")

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent position along each side."""
        return 2 ** (len(self.channel_mult) - 1)


def infinity_d32_config() -> BitwiseVAEConfig:
    """Infinity-2B's tokenizer (``infinity_vae_d32reg.pth``): 32 bits, 16× downsampling."""
    return BitwiseVAEConfig(bits=32, base_channels=128, channel_mult=(1, 2, 4, 4, 4), num_res_blocks=2)


def infinity_d56_patchify_config() -> BitwiseVAEConfig:
    """Infinity-8B's tokenizer (``infinity_vae_d56_f8_14_patchify.pth``): 14 bits, 8× downsampling.

    The transformer groups 2×2 tokenizer positions into one 56-bit token (``bsq.patchify_bits``).
    """
    return BitwiseVAEConfig(bits=14, base_channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=2)


def tiny_vae_config() -> BitwiseVAEConfig:
    """A CPU-trainable tokenizer for 32×32 images: 12 bits, 4× downsampling to an 8×8 latent."""
    return BitwiseVAEConfig(bits=12, base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1, norm_groups=8)


VAE_PRESETS: dict[str, Callable[[], BitwiseVAEConfig]] = {
    "infinity-d32": infinity_d32_config,
    "infinity-d56-patchify": infinity_d56_patchify_config,
    "tiny": tiny_vae_config,
}


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=_NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → 3×3 conv, twice, plus a (1×1-projected when widths differ) skip: ``[B, C_in, h, w] → [B, C_out, h, w]``."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels, norm_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, h, w] → [B, C_out, h, w]``."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all positions with 1×1-conv projections: ``[B, C, h, w] → [B, C, h, w]``."""

    def __init__(self, channels: int, norm_groups: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w] → [B, C, h, w]``."""
        batch, channels, height, width = x.shape
        normed = self.norm(x)
        q, k, v = (proj(normed).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(attended)


class Downsample(nn.Module):
    """Stride-2 3×3 conv padded only right and bottom: ``[B, C, h, w] → [B, C, h/2, w/2]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w] → [B, C, h/2, w/2]``."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2× then a 3×3 conv: ``[B, C, h, w] → [B, C, 2h, 2w]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w] → [B, C, 2h, 2w]``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResolutionLevel(nn.Module):
    """ResNet blocks at one resolution, then an optional ``downsample`` (encoder) or ``upsample`` (decoder)."""

    def __init__(self, blocks: list[ResnetBlock], downsample: Downsample | None = None, upsample: Upsample | None = None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.downsample = downsample
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, h, w] → [B, C_out, h', w']`` (``h'`` = ``h``, ``h/2`` or ``2h``)."""
        for block in self.block:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class MidBlock(nn.Module):
    """ResNet block, optional attention, ResNet block at the lowest resolution: shape-preserving."""

    def __init__(self, channels: int, norm_groups: int, attention: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, norm_groups)
        self.attn_1 = AttentionBlock(channels, norm_groups) if attention else None
        self.block_2 = ResnetBlock(channels, channels, norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w] → [B, C, h, w]``."""
        x = self.block_1(x)
        if self.attn_1 is not None:
            x = self.attn_1(x)
        return self.block_2(x)


class Encoder(nn.Module):
    """Images ``[B, in_channels, H, W]`` → latent ``[B, bits, H/f, W/f]``."""

    def __init__(self, config: BitwiseVAEConfig) -> None:
        super().__init__()
        base, groups = config.base_channels, config.norm_groups
        self.conv_in = nn.Conv2d(config.in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        width = base
        last = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(width, base * mult, groups))
                width = base * mult
            self.down.append(ResolutionLevel(blocks, downsample=Downsample(width) if level < last else None))
        self.mid = MidBlock(width, groups, config.attention_in_mid)
        self.norm_out = _group_norm(width, groups)
        self.conv_out = nn.Conv2d(width, config.bits, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, H, W] → [B, bits, H/f, W/f]``."""
        h = self.conv_in(images)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent ``[B, bits, h, w]`` → images ``[B, 3, h·f, w·f]`` (unclamped)."""

    def __init__(self, config: BitwiseVAEConfig) -> None:
        super().__init__()
        base, groups = config.base_channels, config.norm_groups
        width = base * config.channel_mult[-1]
        self.conv_in = nn.Conv2d(config.bits, width, 3, padding=1)
        self.mid = MidBlock(width, groups, config.attention_in_mid)
        levels: list[ResolutionLevel] = []
        for level in reversed(range(len(config.channel_mult))):
            blocks = []
            # One more block per level than the encoder, as in the official decoder.
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(width, base * config.channel_mult[level], groups))
                width = base * config.channel_mult[level]
            levels.append(ResolutionLevel(blocks, upsample=Upsample(width) if level > 0 else None))
        # Indexed by resolution level (0 = full resolution) like the encoder, but run from the last.
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = _group_norm(width, groups)
        self.conv_out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """``[B, bits, h, w] → [B, 3, h·f, w·f]``."""
        h = self.mid(self.conv_in(latent))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class BitwiseVAE(nn.Module):
    """Infinity's tokenizer: encoder, multi-scale BSQ (parameter-free) and decoder.

    "Maps" are the per-scale bits ``[B, h_k, w_k, bits]`` (long, 0/1) at the *tokenizer's*
    schedule, whose last entry is the latent size ``(H/f, W/f)``.
    """

    def __init__(self, config: BitwiseVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent position along each side (16 for Infinity-2B's tokenizer)."""
        return self.config.downsample_factor

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in ``[-1, 1]`` → continuous latent ``[B, bits, H/f, W/f]`` (float32, before quantization)."""
        height, width = images.shape[-2:]
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}×{width} is not a multiple of the downsample factor {f}")
        return self.encoder(images.to(self.encoder.conv_in.weight.dtype)).float()

    @torch.no_grad()
    def encode_maps(self, images: torch.Tensor, schedule: Schedule) -> list[torch.Tensor]:
        """Images ``[B, 3, H, W]`` → bits per scale, ``[B, h_k, w_k, bits]`` long; ``schedule[-1]`` must be ``(H/f, W/f)``."""
        _, maps = multiscale_quantize(self.encode_latent(images), schedule)
        return maps

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent ``[B, bits, h, w]`` → images ``[B, 3, h·f, w·f]`` clamped to ``[-1, 1]``."""
        return self.decoder(latent.to(self.decoder.conv_in.weight.dtype)).clamp(-1, 1)

    def maps_to_latent(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Bits per scale ``[B, h_k, w_k, bits]`` → summed upsampled codes ``[B, bits, h_S, w_S]`` (last map's size)."""
        size = tuple(maps[-1].shape[1:3])
        return sum(upsample(bits_to_codes(bits), size) for bits in maps)

    def decode_maps(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Bits per scale ``[B, h_k, w_k, bits]`` → images ``[B, 3, h_S·f, w_S·f]`` in ``[-1, 1]``."""
        return self.decode_latent(self.maps_to_latent(maps))

    def reconstruct(self, images: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` → their quantized reconstruction ``[B, 3, H, W]`` in ``[-1, 1]``."""
        return self.decode_maps(self.encode_maps(images, schedule))

    def forward(self, images: torch.Tensor, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: images ``[B, 3, H, W]`` → (reconstruction ``[B, 3, H, W]``, unclamped so
        the loss keeps its gradient; quantized latent ``[B, bits, H/f, W/f]``).

        Gradients reach the encoder through the quantizer's straight-through estimator.
        """
        quantized, _ = multiscale_quantize(self.encode_latent(images), schedule)
        reconstruction = self.decoder(quantized.to(self.decoder.conv_in.weight.dtype))
        return reconstruction, quantized

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        directory = Path(directory)
        atomic_save_safetensors(self.state_dict(), directory / "model.safetensors")
        atomic_write_json(asdict(self.config), directory / "config.json")

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "BitwiseVAE":
        """Load what :meth:`save_pretrained` wrote (strict), in eval mode on ``device``."""
        directory = Path(directory)
        config_path, weights_path = directory / "config.json", directory / "model.safetensors"
        if not config_path.exists() or not weights_path.exists():
            raise CheckpointError(f"{directory} needs config.json and model.safetensors (written by save_pretrained)")
        config = dataclass_from_dict(BitwiseVAEConfig, read_json_config(config_path), str(config_path))
        return load_pretrained_module(lambda: cls(config), weights_path, device).eval()  # checked on the meta device first


def _official_wrapper(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.GroupNorm):
        return "norm"
    return None


def official_key_to_ours(key: str, our_keys: set[str] | dict[str, torch.Tensor]) -> str:
    """Map an official VAE key to ours, as the official ``load_cnn`` matches them.

    A key we already have is kept; otherwise a ``Conv``/``Normalize`` wrapper segment
    (``….conv1.conv.weight``, ``….norm1.norm.bias``) is dropped when that names one of our keys.
    Anything else is returned unchanged (and then reported as unexpected).
    """
    if key in our_keys:
        return key
    match = _WRAPPED.match(key)
    if match is None:
        return key
    names = _CONV_NAMES if match["wrapper"] == "conv" else _NORM_NAMES
    stripped = f"{match['module']}.{match['param']}"
    return stripped if match["name"] in names and stripped in our_keys else key


def official_state_dict(vae: BitwiseVAE) -> dict[str, torch.Tensor]:
    """Our weights in the official ``AutoEncoder`` layout (wrapped conv/norm keys plus the quantizer buffers)."""
    wrappers = {name: _official_wrapper(module) for name, module in vae.named_modules()}
    state: dict[str, torch.Tensor] = {}
    for key, value in vae.state_dict().items():
        module_name, param = key.rsplit(".", 1)
        wrapper = wrappers.get(module_name)
        state[f"{module_name}.{wrapper}.{param}" if wrapper else key] = value
    mask = 2 ** torch.arange(vae.config.bits - 1, -1, -1)
    for key in _QUANTIZER_BUFFERS:
        state[key] = mask.clone()
    return state


def _select_state_dict(raw: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} does not hold a dict")
    # The official loader reads "vae" unless told to use the EMA weights.
    for name in ("vae", "ema"):
        if isinstance(raw.get(name), dict):
            return raw[name]
    if any(str(key).startswith(("encoder.", "decoder.")) for key in raw):
        return raw
    raise CheckpointError(f"{path} holds neither a 'vae' nor an 'ema' state dict (top-level keys: {sorted(map(str, raw))[:20]})")


def load_official_vae_checkpoint(vae: BitwiseVAE, path: str | Path) -> None:
    """Load an official Infinity VAE ``.pth`` (e.g. ``infinity_vae_d32reg.pth``) into ``vae`` strictly.

    A ``.safetensors`` file holding the official ``AutoEncoder`` state dict (official key names, flat)
    loads too. Raises :class:`CheckpointError` listing missing keys, unexpected keys and shape mismatches.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"VAE checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        raw = read_safetensors(path)
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # say which file failed, not where inside torch
            raise CheckpointError(f"could not read {path} as a weights-only PyTorch checkpoint: {error}") from error
    official = _select_state_dict(raw, path)
    our_keys = set(vae.state_dict())
    state: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        if key in _QUANTIZER_BUFFERS:
            # The only trace of the quantizer in the file: its length must be our bit count.
            if tuple(value.shape) != (vae.config.bits,):
                raise CheckpointError(
                    f"checkpoint {path} is for a {value.shape[0]}-bit tokenizer ({key} has shape {tuple(value.shape)}), "
                    f"but the model has bits={vae.config.bits}"
                )
            continue
        state[official_key_to_ours(key, our_keys)] = value
    load_strict(vae, state, path)
