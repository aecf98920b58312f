"""Drawing the synthetic world (:mod:`varerase.data.world`): scenes as images, and captioned datasets.

Every image is ``32×32`` RGB by default. 32 px keeps tokenizer, VAR and detector training fast
on a CPU (a prototype trained the whole pipeline in about 10 minutes on 2 cores).

Objects are drawn at ``supersample``× the size with PIL and downsampled with Lanczos, which gives
smooth (anti-aliased) edges. Objects are large (radius 9–13 px at 32 px) because smaller ones
made shapes much harder to learn.

Typical use::

    images, captions, labels = make_dataset(20_000, seed=0)   # uint8 [N, 32, 32, 3]
    to_float_images(images)                                   # float [N, 3, 32, 32] in [0, 1]
    render_prompts(["a red disc on a stripy backdrop"], [0])  # ground truth of a caption, float [1, 3, 32, 32]
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from varerase.data.world import ATTRIBUTES, KINDS, Scene, Split, allowed_combinations, caption, parse_attributes, unknown_concept_error
from varerase.errors import ConfigError

# Saturated and far apart in hue, so no colour is mistaken for a neighbour after blurring.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (245, 205, 30),
    "purple": (150, 60, 190),
    "orange": (250, 135, 30),
}


@dataclass
class WorldConfig:
    """How world images are drawn and which seed ``make_dataset`` uses by default.

    Object radii are fractions of ``image_size`` (0.28–0.41 is 9–13 px at 32 px); the object
    centre is drawn so that the whole object stays inside the image at any rotation.
    """

    seed: int = 0
    image_size: int = 32
    supersample: int = 4
    min_radius: float = 0.28
    max_radius: float = 0.41
    max_rotation: float = 20.0  # degrees, either way

    def __post_init__(self) -> None:
        if not 0 < self.min_radius <= self.max_radius < 0.5:
            raise ConfigError(
                f"need 0 < min_radius <= max_radius < 0.5 (fractions of the image size), "
                f"got {self.min_radius} and {self.max_radius}"
            )
        if self.image_size < 8 or self.supersample < 1:
            raise ConfigError(f"need image_size >= 8 and supersample >= 1, got {self.image_size}, {self.supersample}")


class WorldDataset(NamedTuple):
    """``images``: uint8 ``[N, H, W, 3]``; ``captions``: N strings; ``labels``: per kind, int64
    ``[N]`` indices into ``SHAPES`` / ``COLOURS`` / ``BACKGROUNDS``."""

    images: np.ndarray
    captions: list[str]
    labels: dict[str, np.ndarray]


def sample_scenes(
    n: int, rng: np.random.Generator, split: Split = "train", config: WorldConfig | None = None
) -> list[Scene]:
    """``n`` random scenes, each combination of the split equally likely."""
    config = config or WorldConfig()
    combinations = allowed_combinations(split)
    chosen = rng.integers(len(combinations), size=n)
    return [Scene(*combinations[c], *placement) for c, placement in zip(chosen, _placements(n, rng, config))]


def _placements(n: int, rng: np.random.Generator, config: WorldConfig) -> list[tuple[float, float, float, float]]:
    """``n`` random ``(size, x, y, rotation)`` of an object, in output pixels and degrees."""
    radii = rng.uniform(config.min_radius, config.max_radius, size=n) * config.image_size
    # Unit positions map into [radius, image_size - radius], so the object never leaves the image.
    unit_xy = rng.uniform(0.0, 1.0, size=(n, 2))
    rotations = rng.uniform(-config.max_rotation, config.max_rotation, size=n)
    xy = radii[:, None] + unit_xy * (config.image_size - 2 * radii[:, None])
    return [(float(radii[i]), float(xy[i, 0]), float(xy[i, 1]), float(rotations[i])) for i in range(n)]


def render_prompts(prompts: Sequence[str], seeds: Sequence[int], config: WorldConfig | None = None) -> torch.Tensor:
    """Ground-truth images of captions: float ``[N, 3, H, W]`` in [0, 1], ``H = W = config.image_size``.

    Image ``i`` shows the shape, colour and background ``prompts[i]`` names (:func:`parse_attributes`,
    synonyms included), placed, sized and turned at random from ``seeds[i]`` alone, as the world
    draws its training images. ConfigError for a prompt that does not name all three.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    config = config or WorldConfig()
    images = np.empty((len(prompts), config.image_size, config.image_size, 3), dtype=np.uint8)
    for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
        attributes = parse_attributes(prompt)
        missing = [kind for kind in KINDS if kind not in attributes]
        if missing:
            raise ConfigError(f"cannot draw the ground truth of {prompt!r}: it names no {' and no '.join(missing)}")
        (placement,) = _placements(1, np.random.default_rng(seed), config)
        images[i] = render(Scene(*(attributes[kind] for kind in KINDS), *placement), config)
    return to_float_images(images)


def _regular_outline(radii: list[float], start_degrees: float = -90.0) -> np.ndarray:
    angles = np.deg2rad(start_degrees) + 2 * np.pi * np.arange(len(radii)) / len(radii)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.asarray(radii)[:, None]


def _heart_outline() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    points = np.stack([x, y], axis=1)
    return points - (points.max(0) + points.min(0)) / 2  # centre the bounding box


def _cross_outline(half_width: float = 0.33) -> np.ndarray:
    w = half_width
    quarter = [(w, -1.0), (w, -w), (1.0, -w)]
    points = []
    for turn in range(4):  # rotate the first arm's corner by 90° four times
        c, s = np.cos(turn * np.pi / 2), np.sin(turn * np.pi / 2)
        points += [(c * px - s * py, s * px + c * py) for px, py in quarter]
    return np.asarray(points)


@functools.cache
def _outline(shape: str) -> np.ndarray:
    """Polygon ``[P, 2]`` (x right, y down) centred on 0 whose farthest point is at radius 1."""
    points = {
        "circle": lambda: _regular_outline([1.0] * 96),
        "square": lambda: _regular_outline([1.0] * 4, start_degrees=45.0),
        "triangle": lambda: _regular_outline([1.0] * 3),
        "star": lambda: _regular_outline([1.0, 0.5] * 5),
        "heart": _heart_outline,
        "cross": _cross_outline,
    }[shape]()
    return points / np.linalg.norm(points, axis=1).max()


@functools.cache
def _background(background: str, image_size: int, supersample: int) -> Image.Image:
    """The background at ``supersample``× size. Patterns are light greys only, so no background
    can be mistaken for an object colour. They are coarse (8 px periods) and differ in mean
    brightness, so a blurry tokenizer reconstruction still shows which one it is; finer 6 px
    patterns became indistinguishable after a 12×12 bottleneck. Designed at 32 px, they scale
    with the image."""
    side = image_size * supersample
    # Pixel centres in units of a 32-px image's pixels.
    u = (np.arange(side) + 0.5) / supersample * (32 / image_size)
    x, y = np.meshgrid(u, u)
    if background == "plain":
        grey = np.full((side, side), 255.0)
    elif background == "striped":
        grey = np.where(((x + y) / 8.0) % 1.0 < 0.5, 170.0, 250.0)  # diagonal, 8 px period
    elif background == "dotted":
        row = np.floor(y / 8.0)
        dx = (x + 4.0 * (row % 2)) % 8.0 - 4.0  # every other row shifted by half a period
        dy = y % 8.0 - 4.0
        grey = np.where(dx**2 + dy**2 < 2.0**2, 150.0, 250.0)
    elif background == "gradient":
        grey = 250.0 - 100.0 * y / 32.0  # light at the top, mid grey at the bottom
    else:
        raise unknown_concept_error(background, ("background",))
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)
    return Image.fromarray(rgb)


def render(scene: Scene, config: WorldConfig | None = None) -> np.ndarray:
    """The scene as uint8 ``[H, W, 3]`` with ``H = W = config.image_size`` (32 by default)."""
    config = config or WorldConfig()
    k = config.supersample
    canvas = _background(scene.background, config.image_size, k).copy()
    angle = np.deg2rad(scene.rotation)
    # Counter-clockwise on screen, where y points down.
    rotate = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    points = (_outline(scene.shape) @ rotate.T * scene.size + (scene.x, scene.y)) * k
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=COLOUR_RGB[scene.colour])
    size = (config.image_size, config.image_size)
    return np.asarray(canvas.resize(size, Image.Resampling.LANCZOS))


def make_dataset(
    n: int, seed: int | None = None, split: Split = "train", config: WorldConfig | None = None
) -> WorldDataset:
    """``n`` captioned images of a split; the same seed gives identical images and captions.

    ``seed`` defaults to ``config.seed``. About 0.2 ms per image.
    """
    config = config or WorldConfig()
    rng = np.random.default_rng(config.seed if seed is None else seed)
    scenes = sample_scenes(n, rng, split, config)
    captions = [caption(scene, rng, split) for scene in scenes]
    images = np.empty((n, config.image_size, config.image_size, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        images[i] = render(scene, config)
    labels = {
        kind: np.array([ATTRIBUTES[kind].index(getattr(s, kind)) for s in scenes], dtype=np.int64)
        for kind in KINDS
    }
    return WorldDataset(images, captions, labels)


def to_float_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` (as ``make_dataset`` gives) → float ``[N, 3, H, W]`` in [0, 1]."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div(255.0)

