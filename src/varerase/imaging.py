"""Image grids as PNG (PIL only; no torchvision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from varerase.io import atomic_write_bytes


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float ``[N, 3, H, W]`` in [0, 1] → uint8 ``[N, H, W, 3]``."""
    return (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def grid_image(images: torch.Tensor, columns: int | None = None, scale: int = 1, padding: int = 2, row_labels: list[str] | None = None) -> Image.Image:
    """Tile ``[N, 3, H, W]`` images into one picture, ``columns`` per row, each enlarged ``scale``× (nearest)."""
    pixels = to_uint8(images)
    n, h, w, _ = pixels.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    h, w = h * scale, w * scale
    label_width = 0 if not row_labels else 8 + 6 * max(len(label) for label in row_labels)
    canvas = Image.new("RGB", (label_width + columns * (w + padding) + padding, rows * (h + padding) + padding), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, columns)
        tile = Image.fromarray(pixels[i]).resize((w, h), Image.Resampling.NEAREST)
        canvas.paste(tile, (label_width + padding + c * (w + padding), padding + r * (h + padding)))
    for r, label in enumerate(row_labels or []):
        draw.text((4, padding + r * (h + padding) + h // 2 - 5), label, fill="black")
    return canvas


def save_grid(images: torch.Tensor, path: str | Path, columns: int | None = None, scale: int = 1, row_labels: list[str] | None = None) -> Path:
    """Write a PNG grid of ``images`` ``[N, 3, H, W]`` atomically (see :func:`grid_image`)."""
    import io

    buffer = io.BytesIO()
    grid_image(images, columns, scale, row_labels=row_labels).save(buffer, format="PNG")
    return atomic_write_bytes(buffer.getvalue(), path)
