"""Classifier-free guidance and per-unit top-k / top-p sampling, shared by every model family."""

from __future__ import annotations

from typing import Sequence

import torch


def cfg_combine(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, cfg: float) -> torch.Tensor:
    """Infinity's guidance on logits: ``cfg·z(c) + (1−cfg)·z(∅)`` (any shape, same for both)."""
    return cfg * cond_logits + (1 - cfg) * uncond_logits


def filter_top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask logits ``[N, V]`` outside the top-k and the nucleus of mass ``top_p`` with ``-inf``.

    Follows VAR/Infinity: top-k keeps entries ≥ the k-th largest; top-p drops the smallest entries
    whose cumulative probability stays ≤ ``1 − top_p`` and always keeps the most likely entry.
    ``0`` disables either filter. Returns a new tensor.
    """
    logits = logits.clone()
    num_classes = logits.shape[-1]
    if 0 < top_k < num_classes:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        remove_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        remove_sorted[..., -1] = False
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_units(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample one class per unit from logits ``[…, V]`` (``V = 2`` for a bit). Returns ``[…]`` long."""
    flat = logits.reshape(-1, logits.shape[-1]).float() / temperature
    flat = filter_top_k_top_p(flat, top_k, top_p)
    choice = torch.multinomial(flat.softmax(dim=-1), num_samples=1, generator=generator)
    return choice.view(logits.shape[:-1])


def sampling_generators(seed: int | Sequence[int] | None, batch: int, device: torch.device | str) -> list[torch.Generator] | torch.Generator | None:
    """Random sources for a batch: one generator (an int seed, as the official samplers do), one per
    row (a list of seeds: each row's sample then depends on its own seed only, not on the batch it
    is in), or None (the global generator)."""
    if seed is None:
        return None
    if isinstance(seed, int):
        return torch.Generator(device).manual_seed(_wrapped(seed))
    seeds = list(seed)
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
    return [torch.Generator(device).manual_seed(_wrapped(int(s))) for s in seeds]


def _wrapped(seed: int) -> int:
    """``seed`` where torch's generators take it: seeds derived from a user's (``seed + j``) may pass 2**64, and wrap."""
    return seed % 2**64 if seed >= 2**64 else seed


def sample_rows(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    generators: list[torch.Generator] | torch.Generator | None,
) -> torch.Tensor:
    """:func:`sample_units` over a batch ``[B, …, V]`` with one generator, or one per row."""
    if not isinstance(generators, list):
        return sample_units(logits, temperature, top_k, top_p, generators)
    return torch.stack([sample_units(row, temperature, top_k, top_p, g) for row, g in zip(logits, generators)])
