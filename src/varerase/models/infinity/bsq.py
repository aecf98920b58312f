"""Multi-scale binary spherical quantization (BSQ): Infinity's bitwise tokens.

A latent ``[B, d, H, W]`` is quantized scale by scale: the residual is area-downsampled to the
scale's size (not at the last scale), each ``d``-vector is L2-normalised and replaced by
``sign/√d`` (bits = positive entries), the codes are upsampled back and subtracted. The
transformer's input for scale ``k+1`` is the running sum of upsampled codes resized to that
scale. Infinity interpolates with ``trilinear`` on ``[B, d, 1, h, w]``; with a time axis of 1 that
is exactly ``bilinear`` on ``[B, d, h, w]``, which is what we use.

With *spatial patchify* (Infinity-8B) the tokenizer works at twice the transformer's resolution
and a transformer token holds the ``4d`` bits of a 2×2 tokenizer patch (``pixel_unshuffle``).
The quantizer has no learned parameters.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

Schedule = Sequence[tuple[int, int]]


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``[B, C, h, w]`` to ``size`` as Infinity's ``trilinear`` mode does on a 1-frame clip."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def downsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-downsample ``[B, C, H, W]`` to ``size`` (Infinity's ``z_interplote_down='area'``)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.adaptive_avg_pool2d(x, size)


def bits_to_codes(bits: torch.Tensor) -> torch.Tensor:
    """Bits ``[B, h, w, d]`` (0/1) → codes ``[B, d, h, w]`` with entries ``±1/√d``."""
    d = bits.shape[-1]
    codes = (bits.float() * 2 - 1) / d**0.5
    return codes.permute(0, 3, 1, 2)


def quantize(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize latents ``[B, d, h, w]`` → (codes ``[B, d, h, w]``, bits ``[B, h, w, d]`` long).

    Codes carry a straight-through gradient to the L2-normalised input, as in Infinity's BSQ.
    """
    d = z.shape[1]
    unit = F.normalize(z.float(), dim=1, eps=1e-12)
    hard = torch.where(unit > 0, 1.0, -1.0) / d**0.5
    codes = unit + (hard - unit).detach()
    bits = (hard > 0).long().permute(0, 2, 3, 1)
    return codes, bits


def multiscale_quantize(latent: torch.Tensor, schedule: Schedule) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Residual quantization of ``latent [B, d, H, W]`` over ``schedule`` (tokenizer sizes, last = ``(H, W)``).

    Returns the quantized latent (sum of upsampled codes, ``[B, d, H, W]``, straight-through
    gradient) and the bits of every scale (``[B, h_k, w_k, d]``).
    """
    full = tuple(latent.shape[-2:])
    if tuple(schedule[-1]) != full:
        raise ValueError(f"schedule ends at {schedule[-1]} but the latent is {full}")
    residual = latent.float()
    summed = torch.zeros_like(residual)
    all_bits = []
    for size in schedule:
        codes, bits = quantize(downsample(residual, size))
        up = upsample(codes, full)
        residual = residual - up.detach()
        summed = summed + up
        all_bits.append(bits)
    return summed, all_bits


def unpatchify_bits(tokens: torch.Tensor) -> torch.Tensor:
    """Transformer tokens ``[B, h, w, 4d]`` → tokenizer bits ``[B, 2h, 2w, d]`` (``pixel_shuffle``)."""
    return F.pixel_shuffle(tokens.permute(0, 3, 1, 2).float(), 2).permute(0, 2, 3, 1).to(tokens.dtype)


def patchify_bits(bits: torch.Tensor) -> torch.Tensor:
    """Tokenizer bits ``[B, 2h, 2w, d]`` → transformer tokens ``[B, h, w, 4d]`` (``pixel_unshuffle``)."""
    return F.pixel_unshuffle(bits.permute(0, 3, 1, 2).float(), 2).permute(0, 2, 3, 1).to(bits.dtype)


class CodeAccumulator:
    """Running sum of a generation's codes, and the transformer input for the next scale.

    ``schedule`` is the transformer's; with ``patchify`` the tokenizer works at twice its size.
    """

    def __init__(self, schedule: Schedule, patchify: bool = False) -> None:
        self.patchify = patchify
        factor = 2 if patchify else 1
        self.tokenizer_schedule = [(h * factor, w * factor) for h, w in schedule]
        self.summed: torch.Tensor | None = None

    def add(self, tokens: torch.Tensor) -> None:
        """Add a scale's tokens ``[B, h, w, d_tok]`` (bits) to the running sum."""
        bits = unpatchify_bits(tokens) if self.patchify else tokens
        up = upsample(bits_to_codes(bits), self.tokenizer_schedule[-1])
        self.summed = up if self.summed is None else self.summed + up

    def next_input(self, scale: int) -> torch.Tensor:
        """Transformer input of scale ``scale`` from the codes added so far: ``[B, h·w, d_tok]``."""
        assert self.summed is not None, "add the previous scale's tokens first"
        x = upsample(self.summed, self.tokenizer_schedule[scale])
        if self.patchify:
            x = F.pixel_unshuffle(x, 2)
        return x.flatten(2).transpose(1, 2)


def teacher_forcing_inputs(maps: Sequence[torch.Tensor], schedule: Schedule, patchify: bool = False, last_scale: int | None = None) -> torch.Tensor:
    """Transformer inputs of scales ``1 … last_scale`` (default ``S-1``) from ground-truth token maps: ``[B, P - 1, d_tok]``.

    ``maps[k]``: ``[B, h_k, w_k, d_tok]`` bits at the transformer's schedule; scales ``0..last_scale−1`` are read.
    """
    acc = CodeAccumulator(schedule, patchify)
    inputs = []
    for k in range(len(schedule) - 1 if last_scale is None else last_scale):
        acc.add(maps[k])
        inputs.append(acc.next_input(k + 1))
    if not inputs:
        return maps[0].new_zeros(maps[0].shape[0], 0, maps[0].shape[-1]).float()
    return torch.cat(inputs, dim=1)
