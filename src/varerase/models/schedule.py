"""Scale schedules, token offsets and the block-causal mask, shared by every model family.

A schedule is a list of token-map sizes ``(h, w)``, coarse to fine. Position ``l`` of the flat
sequence belongs to scale ``level[l]``; under the block-causal mask a position sees every
position of its own and coarser scales.
"""

from __future__ import annotations

from typing import Sequence

import torch

from varerase.errors import ConfigError

Schedule = list[tuple[int, int]]

# Infinity's dynamic-resolution table: per aspect ratio h/w, the token-map sizes of the
# 13-scale (1M pixels, 1024² at 1:1) schedule. Shorter schedules are prefixes of it:
# 0.06M = first 7 scales (256²), 0.25M = 10 (512²), 0.60M = 12, 1M = 13.
INFINITY_RATIO_TO_SIZES: dict[float, Schedule] = {
    1.000: [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)],
    1.250: [(1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36), (55, 44), (70, 56)],
    1.333: [(1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36), (60, 45), (72, 54)],
    1.500: [(1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32), (63, 42), (78, 52)],
    1.750: [(1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32), (70, 40), (84, 48)],
    2.000: [(1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30), (74, 37), (90, 45)],
    2.500: [(1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26), (80, 32), (100, 40)],
    3.000: [(1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24), (90, 30), (111, 37)],
}
# Portrait ratios mirror landscape ones (the official table stores both, keyed by int(1000/r)/1000).
for _ratio, _sizes in list(INFINITY_RATIO_TO_SIZES.items()):
    if _ratio != 1.0:
        INFINITY_RATIO_TO_SIZES[int(1 / _ratio * 1000) / 1000] = [(w, h) for h, w in _sizes]

INFINITY_PIXEL_BUDGETS = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}


def infinity_schedule(pixels: str = "1M", aspect_ratio: float = 1.0) -> Schedule:
    """The official Infinity schedule for a pixel budget (``0.06M``/``0.25M``/``0.60M``/``1M``) and ratio h/w.

    The ratio snaps to the nearest template, as Infinity does.
    """
    if pixels not in INFINITY_PIXEL_BUDGETS:
        raise ConfigError(f"unknown pixel budget {pixels!r}; known: {sorted(INFINITY_PIXEL_BUDGETS)}")
    ratio = min(INFINITY_RATIO_TO_SIZES, key=lambda r: abs(r - aspect_ratio))
    return list(INFINITY_RATIO_TO_SIZES[ratio][: INFINITY_PIXEL_BUDGETS[pixels]])


def rope_reference_grid(schedule: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The grid RoPE positions are normalised to (Infinity's ``rope2d_normalized_by_hw=2``).

    Infinity scales every scale's positions to the last map of the *1M* schedule of the same
    aspect ratio, whatever schedule is used; a schedule outside the table uses its own last map.
    """
    for sizes in INFINITY_RATIO_TO_SIZES.values():
        if list(sizes[: len(schedule)]) == [tuple(s) for s in schedule]:
            return sizes[-1]
    return tuple(schedule[-1])


def scale_token_counts(schedule: Sequence[tuple[int, int]]) -> list[int]:
    """Tokens per scale: ``[h_k·w_k]``."""
    return [h * w for h, w in schedule]


def scale_offsets(schedule: Sequence[tuple[int, int]]) -> list[int]:
    """Start of each scale in the flat sequence, plus the total ``L`` at the end (length ``S + 1``)."""
    offsets = [0]
    for n in scale_token_counts(schedule):
        offsets.append(offsets[-1] + n)
    return offsets


def token_levels(schedule: Sequence[tuple[int, int]], device: torch.device | str | None = None) -> torch.Tensor:
    """Scale index of every position: ``[L]`` long."""
    return torch.cat([torch.full((n,), k, dtype=torch.long, device=device) for k, n in enumerate(scale_token_counts(schedule))])


def block_causal_mask(schedule: Sequence[tuple[int, int]], device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean attention mask ``[L, L]``: True where query ``i`` may attend to key ``j`` (``level[j] ≤ level[i]``)."""
    levels = token_levels(schedule, device)
    return levels[:, None] >= levels[None, :]
