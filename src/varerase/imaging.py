"""Image grids as PNG (PIL only; no torchvision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from varerase.errors import ConfigError
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


MAX_GRID_IMAGES = 64  # a grid with more is too large to look at (and, thousands wide, to open)
MAX_GRID_COLUMNS = 8  # columns of a cut grid


def check_image_path(path: str | Path) -> Path:
    """``path`` if a PNG can be written there (its folder is created), else a ConfigError saying why — before any work."""
    from varerase.runtime.output_folders import check_writable

    path = Path(path)
    if path.is_dir() or str(path).endswith(("/", ".")):
        raise ConfigError(f"--out {path} is a folder; give the PNG file to write, e.g. --out {path / 'grid.png'}")
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--out {path} must name a .png file (the grid is written as PNG)")
    check_writable(path.absolute().parent)
    if path.exists() and not path.is_file():
        raise ConfigError(f"--out {path} exists and is not a file")
    return path


def generated_folder(grid: str | Path) -> Path:
    """Where :func:`save_generated` writes the single images next to ``grid`` (``grid.png`` → ``grid/``)."""
    grid = Path(grid)
    return grid.with_suffix("") if grid.suffix else grid.with_name(grid.name + "_images")


def save_generated(images: torch.Tensor, path: str | Path, per_prompt: int, scale: int = 1) -> Path | None:
    """Write generated ``images`` ``[P·per_prompt, 3, H, W]`` (prompt-major) as a PNG grid at ``path``, one row per prompt.

    With more than :data:`MAX_GRID_IMAGES` images the grid shows the first images
    (:data:`MAX_GRID_COLUMNS` per prompt at most) of the first prompts that fit, and every image is
    also written into the folder next to it (``grid.png`` → ``grid/``) as ``pPPP_iIIII.png``
    (prompt ``PPP``, image ``IIII`` of it, i.e. seed + IIII). Returns that folder, or None when the grid holds them all.
    """
    import io

    path = Path(path)
    count = images.shape[0]
    if count <= MAX_GRID_IMAGES:
        save_grid(images, path, columns=per_prompt, scale=scale)
        return None
    prompts = count // per_prompt
    columns = min(per_prompt, MAX_GRID_COLUMNS)
    rows = min(prompts, MAX_GRID_IMAGES // columns)
    shown = torch.cat([images[r * per_prompt : r * per_prompt + columns] for r in range(rows)])
    save_grid(shown, path, columns=columns, scale=scale)
    folder = generated_folder(path)
    digits = max(3, len(str(prompts - 1))), max(4, len(str(per_prompt - 1)))
    for start in range(0, count, 256):
        for i, pixels in enumerate(to_uint8(images[start : start + 256]), start):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            prompt, image = divmod(i, per_prompt)
            atomic_write_bytes(buffer.getvalue(), folder / f"p{prompt:0{digits[0]}d}_i{image:0{digits[1]}d}.png")
    return folder
