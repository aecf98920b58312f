"""Drawing the synthetic world (:mod:`varerase.data.world`): scenes as images, and captioned datasets.

Every image is ``32×32`` RGB by default. 32 px keeps tokenizer, VAR and detector training fast
on a CPU (a prototype trained the whole pipeline in about 10 minutes on 2 cores).

Objects are drawn at ``supersample``× the size with PIL and downsampled with Lanczos, which gives
smooth (anti-aliased) edges. A lone object is large (radius 9–13 px at 32 px) because smaller ones
made shapes much harder to learn; two objects share the image as its left and right halves
(radius 5.8–7.4 px each, so they never overlap). A style (``STYLE_LOOKS``) is applied last, to
the whole image.

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

from varerase.data.world import (
    ATTRIBUTES,
    MAX_OBJECTS,
    STYLES,
    UNSTYLED,
    Scene,
    Split,
    WorldObject,
    allowed_combinations,
    allowed_shape_pairs,
    caption,
    parse_attributes,
    parse_objects,
    unknown_concept_error,
)
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

    Object radii are fractions of ``image_size`` (0.28–0.41 is 9–13 px at 32 px; a pair's
    0.21–0.245 is 6.7–7.8 px, close to the 8 px a 16 px half holds); an object's centre is drawn
    so that the whole object stays inside the image (a pair's: inside its half) at any rotation.
    ``two_object_fraction`` of the scenes ``sample_scenes`` draws have two objects and
    ``styled_fraction`` a style other than unstyled, each style equally often. The defaults are
    the shipped model's world; pairs smaller than 6.7 px came out as blobs whose shape neither
    the tokenizer nor the transformer kept (``docs/results/world.md``).
    """

    seed: int = 0
    image_size: int = 32
    supersample: int = 4
    min_radius: float = 0.28
    max_radius: float = 0.41
    min_pair_radius: float = 0.21
    max_pair_radius: float = 0.245
    max_rotation: float = 20.0  # degrees, either way
    two_object_fraction: float = 0.5
    styled_fraction: float = 0.4

    def __post_init__(self) -> None:
        if not 0 < self.min_radius <= self.max_radius < 0.5:
            raise ConfigError(
                f"need 0 < min_radius <= max_radius < 0.5 (fractions of the image size), "
                f"got {self.min_radius} and {self.max_radius}"
            )
        if not 0 < self.min_pair_radius <= self.max_pair_radius <= 0.25:
            raise ConfigError(
                f"need 0 < min_pair_radius <= max_pair_radius <= 0.25 (two objects share the image's width), "
                f"got {self.min_pair_radius} and {self.max_pair_radius}"
            )
        for name in ("two_object_fraction", "styled_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.image_size < 8 or self.supersample < 1:
            raise ConfigError(f"need image_size >= 8 and supersample >= 1, got {self.image_size}, {self.supersample}")


class WorldDataset(NamedTuple):
    """``images``: uint8 ``[N, H, W, 3]``; ``captions``: N strings; ``labels``: int64 indices into
    ``SHAPES`` / ``COLOURS`` / ``BACKGROUNDS`` / ``STYLES``: ``"shape"`` and ``"colour"``
    ``[N, MAX_OBJECTS]`` (left object first, -1 where an image has fewer objects),
    ``"background"`` and ``"style"`` ``[N]``."""

    images: np.ndarray
    captions: list[str]
    labels: dict[str, np.ndarray]


def sample_scenes(
    n: int, rng: np.random.Generator, split: Split = "train", config: WorldConfig | None = None
) -> list[Scene]:
    """``n`` random scenes of a split: one object from its (shape, colour, background) triples, each
    equally likely, or (``two_object_fraction`` of them) two objects from its shape pairs with two
    different colours and any background; ``styled_fraction`` of them styled."""
    config = config or WorldConfig()
    combinations = allowed_combinations(split)
    shape_pairs = allowed_shape_pairs(split)
    scenes = []
    for _ in range(n):
        if rng.uniform() < config.styled_fraction:
            style = STYLES[1 + rng.integers(len(STYLES) - 1)]
        else:
            style = UNSTYLED
        if rng.uniform() < config.two_object_fraction:
            shapes = shape_pairs[rng.integers(len(shape_pairs))]
            colours = [ATTRIBUTES["colour"][c] for c in rng.choice(len(ATTRIBUTES["colour"]), size=2, replace=False)]
            background = ATTRIBUTES["background"][rng.integers(len(ATTRIBUTES["background"]))]
            placements = _pair_placements(rng, config)
            objects = tuple(WorldObject(s, c, *p) for s, c, p in zip(shapes, colours, placements))
        else:
            shape, colour, background = combinations[rng.integers(len(combinations))]
            objects = (WorldObject(shape, colour, *_placement(rng, config)),)
        scenes.append(Scene(objects, background, style))
    return scenes


def _placement(rng: np.random.Generator, config: WorldConfig) -> tuple[float, float, float, float]:
    """A lone object's random ``(size, x, y, rotation)``, in output pixels and degrees."""
    radius = rng.uniform(config.min_radius, config.max_radius) * config.image_size
    # Unit positions map into [radius, image_size - radius], so the object never leaves the image.
    unit_x, unit_y = rng.uniform(0.0, 1.0, size=2)
    rotation = rng.uniform(-config.max_rotation, config.max_rotation)
    span = config.image_size - 2 * radius
    return float(radius), float(radius + unit_x * span), float(radius + unit_y * span), float(rotation)


def _pair_placements(rng: np.random.Generator, config: WorldConfig) -> list[tuple[float, float, float, float]]:
    """Two objects' ``(size, x, y, rotation)``, the first inside the left half and the second inside
    the right half of the image, so they never overlap."""
    half = config.image_size / 2
    placements = []
    for side in range(2):
        radius = rng.uniform(config.min_pair_radius, config.max_pair_radius) * config.image_size
        unit_x, unit_y = rng.uniform(0.0, 1.0, size=2)
        rotation = rng.uniform(-config.max_rotation, config.max_rotation)
        x = side * half + radius + unit_x * (half - 2 * radius)
        y = radius + unit_y * (config.image_size - 2 * radius)
        placements.append((float(radius), float(x), float(y), float(rotation)))
    return placements


def render_prompts(prompts: Sequence[str], seeds: Sequence[int], config: WorldConfig | None = None) -> torch.Tensor:
    """Ground-truth images of captions: float ``[N, 3, H, W]`` in [0, 1], ``H = W = config.image_size``.

    Image ``i`` shows the objects (one or two, :func:`parse_objects`), background and style
    (unstyled when unnamed) ``prompts[i]`` names, synonyms included, placed, sized and turned at
    random from ``seeds[i]`` alone, as the world draws its training images. ConfigError for a
    prompt that names no background, no object, an object without its colour, or more than two.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    config = config or WorldConfig()
    images = np.empty((len(prompts), config.image_size, config.image_size, 3), dtype=np.uint8)
    for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
        images[i] = render(_scene_of_prompt(prompt, np.random.default_rng(seed), config), config)
    return to_float_images(images)


def _scene_of_prompt(prompt: str, rng: np.random.Generator, config: WorldConfig) -> Scene:
    attributes = parse_attributes(prompt)
    objects = parse_objects(prompt)
    problem = (
        "it names no background" if "background" not in attributes
        else "it names no shape" if not objects
        else f"it names {len(objects)} objects (at most {MAX_OBJECTS})" if len(objects) > MAX_OBJECTS
        else "an object has no colour" if any(colour is None for _, colour in objects)
        else None
    )
    if problem:
        raise ConfigError(f"cannot draw the ground truth of {prompt!r}: {problem}")
    placements = [_placement(rng, config)] if len(objects) == 1 else _pair_placements(rng, config)
    return Scene(
        tuple(WorldObject(shape, colour, *p) for (shape, colour), p in zip(objects, placements)),
        attributes["background"],
        attributes.get("style", UNSTYLED),
    )


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


def _sepia(rgb: np.ndarray) -> np.ndarray:
    # A warm tint, mild enough that the six object colours stay apart (yellow and orange differ
    # most in green, which keeps 86 %).
    return rgb * np.array([1.0, 0.86, 0.64])


def _neon(rgb: np.ndarray) -> np.ndarray:
    # Greys (the background) invert to dark; colour beyond the grey part (an object) is boosted
    # and lit by the dark background's level, so objects glow on black and patterns stay visible.
    grey = rgb.min(axis=2, keepdims=True)
    light = rgb.max(axis=2, keepdims=True)
    return (rgb - grey) * 1.2 + (255.0 - light) * 0.6


def _pastel(rgb: np.ndarray) -> np.ndarray:
    return rgb * 0.55 + 115.0  # towards white: lighter, half the contrast


def _mosaic(rgb: np.ndarray) -> np.ndarray:
    # Dark grout lines on a 4 px grid (one latent token of the tiny tokenizer each tile).
    side = rgb.shape[0]
    grout = (np.arange(side) % 4) == 3
    darker = np.where(grout[:, None] | grout[None, :], 0.6, 1.0)
    return rgb * darker[..., None]


# Each style's look, applied to the whole float RGB image [H, W, 3] in 0–255.
STYLE_LOOKS = {"sepia": _sepia, "neon": _neon, "pastel": _pastel, "mosaic": _mosaic}


def render(scene: Scene, config: WorldConfig | None = None) -> np.ndarray:
    """The scene as uint8 ``[H, W, 3]`` with ``H = W = config.image_size`` (32 by default)."""
    config = config or WorldConfig()
    k = config.supersample
    canvas = _background(scene.background, config.image_size, k).copy()
    draw = ImageDraw.Draw(canvas)
    for item in scene.objects:
        angle = np.deg2rad(item.rotation)
        # Counter-clockwise on screen, where y points down.
        rotate = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        points = (_outline(item.shape) @ rotate.T * item.size + (item.x, item.y)) * k
        draw.polygon([tuple(p) for p in points], fill=COLOUR_RGB[item.colour])
    size = (config.image_size, config.image_size)
    image = np.asarray(canvas.resize(size, Image.Resampling.LANCZOS))
    if scene.style == UNSTYLED:
        return image
    return np.clip(STYLE_LOOKS[scene.style](image.astype(np.float64)), 0, 255).round().astype(np.uint8)


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
    return WorldDataset(images, captions, scene_labels(scenes))


def scene_labels(scenes: Sequence[Scene]) -> dict[str, np.ndarray]:
    """The ``WorldDataset.labels`` of ``scenes`` (see there)."""
    labels = {kind: np.full((len(scenes), MAX_OBJECTS), -1, dtype=np.int64) for kind in ("shape", "colour")}
    for i, scene in enumerate(scenes):
        for j, item in enumerate(scene.objects):
            labels["shape"][i, j] = ATTRIBUTES["shape"].index(item.shape)
            labels["colour"][i, j] = ATTRIBUTES["colour"].index(item.colour)
    for kind in ("background", "style"):
        labels[kind] = np.array([ATTRIBUTES[kind].index(getattr(s, kind)) for s in scenes], dtype=np.int64)
    return labels


def to_float_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` (as ``make_dataset`` gives) → float ``[N, 3, H, W]`` in [0, 1]."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div(255.0)

