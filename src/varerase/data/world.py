"""The captioned synthetic world that the built-in tiny text-to-image model is trained on.

Every image is ``32×32`` RGB with exactly one object: a shape of one colour on one background.
32 px keeps tokenizer, VAR and detector training fast on a CPU (a prototype trained the whole
pipeline in about 10 minutes on 2 cores). Two objects per image were left out on purpose: at
32 px there is no room for two objects large enough to tell their shapes apart, and a
single object keeps "which concept does this image show" unambiguous.

Objects are drawn at ``supersample``× the size with PIL and downsampled with Lanczos, which gives
smooth (anti-aliased) edges. Objects are large (radius 9–13 px at 32 px) because smaller ones
made shapes much harder to learn.

The vocabulary of concepts is the three attribute tuples ``SHAPES``, ``COLOURS`` and
``BACKGROUNDS``; every concept name is unique across them. Captions use several templates and a
few synonyms per word. Some templates (``HELDOUT_TEMPLATES``) and some (shape, colour,
background) combinations (``HELDOUT_COMBINATIONS``) are reserved for the ``"heldout"`` split and
never appear in ``"train"``, so prompt following can be measured on unseen prompts.

Typical use::

    images, captions, labels = make_dataset(20_000, seed=0)   # uint8 [N, 32, 32, 3]
    prompt_for(colour="red", shape="circle")                  # 'a red circle'
    parse_attributes("a violet disc, stripy backdrop")        # {'shape': 'circle', ...}
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from varerase.errors import ConfigError

Split = Literal["train", "heldout"]
Kind = Literal["shape", "colour", "background"]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "dotted", "gradient")

KINDS: tuple[Kind, ...] = ("shape", "colour", "background")
ATTRIBUTES: dict[Kind, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS}

# Saturated and far apart in hue, so no colour is mistaken for a neighbour after blurring.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (245, 205, 30),
    "purple": (150, 60, 190),
    "orange": (250, 135, 30),
}

# Words a caption may use for each concept; the first is the concept's own name.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "heart": ("heart",),
    "cross": ("cross", "plus sign"),
    "red": ("red",),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow",),
    "purple": ("purple", "violet"),
    "orange": ("orange",),
    "plain": ("plain", "white", "blank"),
    "striped": ("striped", "stripy", "lined"),
    "dotted": ("dotted", "spotty", "polka-dot"),
    "gradient": ("gradient", "shaded", "fading"),
}

# Caption templates; "a" before a vowel becomes "an" after filling in.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} on a {background} background",
    "a photo of a {colour} {shape}, {background} background",
    "{colour} {shape}, {background} backdrop",
    "an image of a {colour} {shape} over a {background} background",
    "a {background} background with a {colour} {shape}",
    "a {colour} object shaped like a {shape} on a {background} background",
)
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a drawing of a {colour} {shape} on a {background} backdrop",
    "a {background} backdrop behind a {colour} {shape}",
)

# 12 of the 144 (shape, colour, background) triples (8%), never drawn for training. Each shape,
# colour and background is held out equally often and every (shape, colour) pair keeps three of
# its four backgrounds, so every attribute and pair is still seen in training.
HELDOUT_COMBINATIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("circle", "green", "striped"),
        ("circle", "yellow", "dotted"),
        ("square", "blue", "gradient"),
        ("square", "purple", "plain"),
        ("triangle", "yellow", "striped"),
        ("triangle", "orange", "dotted"),
        ("star", "purple", "gradient"),
        ("star", "red", "plain"),
        ("heart", "orange", "striped"),
        ("heart", "green", "dotted"),
        ("cross", "red", "gradient"),
        ("cross", "blue", "plain"),
    }
)


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


@dataclass(frozen=True)
class Scene:
    """One image's content. ``size`` is the object's outer radius and ``x``, ``y`` its centre,
    all in output pixels; ``rotation`` is in degrees, counter-clockwise."""

    shape: str
    colour: str
    background: str
    size: float
    x: float
    y: float
    rotation: float

    def __post_init__(self) -> None:
        for kind in KINDS:
            name = getattr(self, kind)
            if name not in ATTRIBUTES[kind]:
                raise ConfigError(f"unknown {kind} {name!r}; known: {', '.join(ATTRIBUTES[kind])}")

    @property
    def attributes(self) -> dict[str, str]:
        """``{"shape": …, "colour": …, "background": …}``, the form ``parse_attributes`` returns."""
        return {kind: getattr(self, kind) for kind in KINDS}

    @property
    def combination(self) -> tuple[str, str, str]:
        return (self.shape, self.colour, self.background)


class WorldDataset(NamedTuple):
    """``images``: uint8 ``[N, H, W, 3]``; ``captions``: N strings; ``labels``: per kind, int64
    ``[N]`` indices into ``SHAPES`` / ``COLOURS`` / ``BACKGROUNDS``."""

    images: np.ndarray
    captions: list[str]
    labels: dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Concept names


@functools.cache
def _word_to_concept() -> dict[str, str]:
    return {word: concept for concept, words in SYNONYMS.items() for word in words}


def _kind_of(concept: str) -> Kind:
    return next(kind for kind in KINDS if concept in ATTRIBUTES[kind])


def _unknown_concept(name: str, kinds: tuple[Kind, ...] = KINDS) -> ConfigError:
    known = [word for kind in kinds for concept in ATTRIBUTES[kind] for word in SYNONYMS[concept]]
    close = difflib.get_close_matches(name.lower(), known, n=3)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    what = "concept" if kinds == KINDS else kinds[0]
    names = ", ".join(concept for kind in kinds for concept in ATTRIBUTES[kind])
    return ConfigError(f"unknown {what} {name!r}; {hint}known: {names} (and their synonyms)")


def canonical_concept(name: str) -> str:
    """The concept a word or synonym names: ``"violet"`` → ``"purple"``; ConfigError if unknown."""
    concept = _word_to_concept().get(" ".join(name.lower().split()))
    if concept is None:
        raise _unknown_concept(name)
    return concept


def concept_kind(name: str) -> Kind:
    """``"shape"``, ``"colour"`` or ``"background"`` for a concept name or synonym.

    Raises ConfigError naming close matches, e.g. ``unknown concept 'circel'; did you mean
    'circle'? known: …``.
    """
    return _kind_of(canonical_concept(name))


@functools.cache
def _concept_pattern() -> re.Pattern[str]:
    # Longest first so "plus sign" wins over any shorter word; optional plural ("discs", "boxes").
    words = sorted(_word_to_concept(), key=len, reverse=True)
    alternatives = "|".join(re.escape(word).replace(r"\ ", r"\s+") for word in words)
    return re.compile(rf"\b({alternatives})(?:e?s)?\b", re.IGNORECASE)


def named_concepts(prompt: str) -> list[str]:
    """Every concept a prompt names, as canonical names in order of appearance (repeats kept)."""
    words = _word_to_concept()
    return [words[" ".join(m.group(1).lower().split())] for m in _concept_pattern().finditer(prompt)]


def parse_attributes(prompt: str) -> dict[str, str]:
    """Which shape, colour and background a prompt names, e.g. ``"a violet disc, stripy
    backdrop"`` → ``{"shape": "circle", "colour": "purple", "background": "striped"}``.

    Kinds the prompt does not name are absent. A world image has one object, so a kind named
    twice with different words keeps its first mention; use ``named_concepts`` to see all.
    Note that "white" names the plain (white) background.
    """
    found: dict[str, str] = {}
    for concept in named_concepts(prompt):
        found.setdefault(_kind_of(concept), concept)
    return found


# ---------------------------------------------------------------------------------------------
# Captions and prompts


def _with_articles(text: str) -> str:
    """Fix "a" before a vowel ("a orange star" → "an orange star")."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def _templates(split: Split) -> tuple[str, ...]:
    if split == "train":
        return TRAIN_TEMPLATES
    if split == "heldout":
        return HELDOUT_TEMPLATES
    raise ConfigError(f"unknown split {split!r}; use 'train' or 'heldout'")


def caption(scene: Scene, rng: np.random.Generator, split: Split = "train") -> str:
    """A caption naming exactly the scene's shape, colour and background.

    The template is drawn from the split's templates and each attribute word from its synonyms.
    """
    templates = _templates(split)
    template = templates[rng.integers(len(templates))]
    words = {}
    for kind in KINDS:
        synonyms = SYNONYMS[getattr(scene, kind)]
        words[kind] = synonyms[rng.integers(len(synonyms))]
    return _with_articles(template.format(**words))


def _attribute_word(kind: Kind, word: str) -> str:
    word = " ".join(word.lower().split())
    concept = _word_to_concept().get(word)
    if concept is None:
        raise _unknown_concept(word, (kind,))
    if _kind_of(concept) != kind:
        raise ConfigError(f"{word!r} is a {_kind_of(concept)}, not a {kind}")
    return word


def prompt_for(
    shape: str | None = None,
    colour: str | None = None,
    background: str | None = None,
    template: str | None = None,
) -> str:
    """A prompt naming the given attributes; any may be omitted (at least one is needed).

    Without ``template`` the canonical form is used: ``"a red circle on a striped background"``,
    ``"a red circle"``, ``"a circle on a striped background"``, ``"a red object"``,
    ``"a striped background"``. With ``template`` (e.g. one of ``TRAIN_TEMPLATES``), every
    ``{shape}``/``{colour}``/``{background}`` slot it has must be given. Synonyms are used as
    given (``shape="disc"`` → ``"a disc"``), so prompts can probe them.
    """
    given = {
        kind: _attribute_word(kind, word)
        for kind, word in (("shape", shape), ("colour", colour), ("background", background))
        if word is not None
    }
    if not given:
        raise ConfigError("prompt_for needs at least one of shape, colour, background")
    if template is not None:
        missing = [kind for kind in KINDS if "{" + kind + "}" in template and kind not in given]
        if missing:
            raise ConfigError(f"template {template!r} needs {', '.join(missing)}")
        return _with_articles(template.format(**given))
    noun = given.get("shape", "object")
    thing = f"{given['colour']} {noun}" if "colour" in given else noun if "shape" in given else None
    backdrop = f"{given['background']} background" if "background" in given else None
    if thing and backdrop:
        return _with_articles(f"a {thing} on a {backdrop}")
    return _with_articles(f"a {thing or backdrop}")


# ---------------------------------------------------------------------------------------------
# Scenes and rendering


def allowed_combinations(split: Split) -> list[tuple[str, str, str]]:
    """The (shape, colour, background) triples a split draws from, in a fixed order."""
    _templates(split)  # validates the split name
    heldout = split == "heldout"
    return [
        (s, c, b)
        for s in SHAPES
        for c in COLOURS
        for b in BACKGROUNDS
        if ((s, c, b) in HELDOUT_COMBINATIONS) == heldout
    ]


def sample_scenes(
    n: int, rng: np.random.Generator, split: Split = "train", config: WorldConfig | None = None
) -> list[Scene]:
    """``n`` random scenes, each combination of the split equally likely."""
    config = config or WorldConfig()
    combinations = allowed_combinations(split)
    chosen = rng.integers(len(combinations), size=n)
    radii = rng.uniform(config.min_radius, config.max_radius, size=n) * config.image_size
    # Unit positions map into [radius, image_size - radius], so the object never leaves the image.
    unit_xy = rng.uniform(0.0, 1.0, size=(n, 2))
    rotations = rng.uniform(-config.max_rotation, config.max_rotation, size=n)
    scenes = []
    for i in range(n):
        shape, colour, background = combinations[chosen[i]]
        x, y = radii[i] + unit_xy[i] * (config.image_size - 2 * radii[i])
        scenes.append(Scene(shape, colour, background, float(radii[i]), float(x), float(y), float(rotations[i])))
    return scenes


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
        raise _unknown_concept(background, ("background",))
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

