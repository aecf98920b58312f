"""The captioned synthetic world that the built-in tiny text-to-image model is trained on: its
vocabulary of concepts, scene contents, and captions. Drawing scenes as images is
:mod:`varerase.data.world_rendering`.

Most images show one object: a shape of one colour on one background. Some show two objects of
different shapes and colours, side by side ("a red circle and a blue square on a striped
background"; the first named is on the left), smaller so that both fit without overlapping; they
make "erase one object, keep the other" measurable. Any image may also have a **style**, a global
look applied to the whole image and named in its caption ("…, in sepia style"); ``"unstyled"`` is
the default, which captions never name, so a prompt that names no style asks for an unstyled image.

The vocabulary of concepts is the four attribute tuples ``SHAPES``, ``COLOURS``, ``BACKGROUNDS``
and ``STYLES``; every concept name is unique across them. Captions use several templates and a
few synonyms per word. Some templates (``HELDOUT_TEMPLATES``) and some (shape, colour,
background) combinations (``HELDOUT_COMBINATIONS``) are reserved for the ``"heldout"`` split and
never appear in ``"train"``, so prompt following can be measured on unseen prompts.
``PARAPHRASES`` are words for each concept that no caption ever uses (evaluation's paraphrase
group probes whether an erasure reaches the concept through words it was not trained on).

Typical use::

    prompt_for(colour="red", shape="circle")                  # 'a red circle'
    parse_attributes("a violet disc, stripy backdrop")        # {'shape': 'circle', ...}
    canonical_concept("violet")                               # 'purple'
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from varerase.errors import ConfigError

Split = Literal["train", "heldout"]
Kind = Literal["shape", "colour", "background", "style"]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "dotted", "gradient")
# Each changes the whole image in a different way (world_rendering.STYLE_LOOKS): a warm palette
# (sepia), a dark inverted background under vivid objects (neon), washed-out tone and contrast
# (pastel), a texture of grout lines on a 4 px grid (mosaic). "unstyled" is first: the default.
STYLES: tuple[str, ...] = ("unstyled", "sepia", "neon", "pastel", "mosaic")
UNSTYLED = "unstyled"

KINDS: tuple[Kind, ...] = ("shape", "colour", "background", "style")
OBJECT_KINDS: tuple[Kind, ...] = ("shape", "colour")  # what each object of a scene has; the rest is the scene's
ATTRIBUTES: dict[Kind, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS, "style": STYLES}
MAX_OBJECTS = 2

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
    "unstyled": ("unstyled",),
    "sepia": ("sepia", "sepia-toned"),
    "neon": ("neon", "glowing neon"),
    "pastel": ("pastel", "soft pastel"),
    "mosaic": ("mosaic", "grouted mosaic"),
}

# Words naming each concept that no caption uses: none is a word of TRAIN_TEMPLATES, HELDOUT_TEMPLATES
# or SYNONYMS, nor built on a caption word for its concept ("circular", "reddish" and "stripes" were
# left out for that reason). Whether the tiny model understands one is measured, not assumed: the
# evaluation's paraphrase group keeps only the prompts the original model draws as the concept.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "circle": ("ring", "oval", "wheel", "hoop", "ellipse", "coin"),
    "square": ("rectangle", "tile", "block", "cube", "quadrilateral", "four-sided shape"),
    "triangle": ("pyramid", "wedge", "three-sided shape", "arrowhead", "delta", "trigon"),
    "star": ("pentagram", "asterisk", "five-pointed shape", "sparkle", "twinkle", "sheriff badge"),
    "heart": ("valentine", "love symbol", "cardioid", "symbol of love", "love token", "cupid symbol"),
    "cross": ("crucifix", "first-aid symbol", "swiss flag symbol", "addition symbol", "hospital symbol", "x-shape"),
    "red": ("carmine", "tomato", "crimson", "scarlet", "ruby", "cherry"),
    "green": ("emerald", "lime", "jade", "olive", "grassy", "leafy"),
    "blue": ("azure", "navy", "sapphire", "cobalt", "cyan", "ultramarine"),
    "yellow": ("golden", "lemon", "canary", "mustard", "banana", "sunflower"),
    "purple": ("lilac", "lavender", "plum", "magenta", "mauve", "amethyst"),
    "orange": ("tangerine", "amber", "apricot", "pumpkin", "carrot", "saffron"),
    "plain": ("empty", "bare", "unpatterned", "uniform", "featureless", "solid"),
    "striped": ("banded", "hatched", "zebra", "ribbed", "candy-cane", "barred"),
    "dotted": ("speckled", "flecked", "freckled", "dalmatian", "pointillist", "dappled"),
    "gradient": ("ombre", "darkening", "graded", "dimming", "two-tone", "shadowy"),
    "unstyled": (),  # captions never name it, so there is nothing to paraphrase
    "sepia": ("antique", "vintage", "old-photograph", "daguerreotype", "brownish", "tintype"),
    "neon": ("fluorescent", "luminous", "blacklight", "synthwave", "electric", "day-glo"),
    "pastel": ("washed-out", "chalky", "pale", "muted", "powdery", "creamy"),
    "mosaic": ("inlaid", "tessellated", "gridded", "cobbled", "tesserae", "latticed"),
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
# Two objects: the first named ({colour}, {shape}) is drawn on the left, the second ({colour2},
# {shape2}) on the right.
PAIR_TRAIN_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} and a {colour2} {shape2} on a {background} background",
    "a photo of a {colour} {shape} beside a {colour2} {shape2}, {background} background",
    "{colour} {shape} and {colour2} {shape2}, {background} backdrop",
)
PAIR_HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a drawing of a {colour} {shape} next to a {colour2} {shape2} on a {background} backdrop",
)
# How a caption names its style, around the object part ``{scene}``.
STYLE_TRAIN_TEMPLATES: tuple[str, ...] = ("{scene}, in {style} style", "{style} style: {scene}", "{scene}, {style} art")
STYLE_HELDOUT_TEMPLATES: tuple[str, ...] = ("{scene}, rendered in {style} style",)

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


# Ordered (left shape, right shape) pairs never drawn together for training: each shape once on
# each side, so every shape is still seen beside four others on each side.
HELDOUT_SHAPE_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("circle", "star"), ("square", "heart"), ("triangle", "cross"), ("star", "square"), ("heart", "triangle"), ("cross", "circle")}
)


def _check_name(kind: Kind, name: str) -> None:
    if name not in ATTRIBUTES[kind]:
        raise ConfigError(f"unknown {kind} {name!r}; known: {', '.join(ATTRIBUTES[kind])}")


@dataclass(frozen=True)
class WorldObject:
    """One object of a scene. ``size`` is its outer radius and ``x``, ``y`` its centre, all in
    output pixels; ``rotation`` is in degrees, counter-clockwise."""

    shape: str
    colour: str
    size: float
    x: float
    y: float
    rotation: float

    def __post_init__(self) -> None:
        _check_name("shape", self.shape)
        _check_name("colour", self.colour)


@dataclass(frozen=True)
class Scene:
    """One image's content: one or two objects (left to right, different shapes and colours), a
    background and a style."""

    objects: tuple[WorldObject, ...]
    background: str
    style: str = UNSTYLED

    def __post_init__(self) -> None:
        _check_name("background", self.background)
        _check_name("style", self.style)
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ConfigError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        for kind in OBJECT_KINDS:
            values = [getattr(o, kind) for o in self.objects]
            if len(set(values)) != len(values):
                raise ConfigError(f"the objects of a scene have different {kind}s, got {values}")

    @property
    def attributes(self) -> dict[str, str]:
        """``{"shape", "colour", "background", "style"}`` of a one-object scene, the form
        ``parse_attributes`` returns; ValueError for two objects (see ``objects``)."""
        if len(self.objects) != 1:
            raise ValueError("a two-object scene has no single shape and colour; read scene.objects")
        (only,) = self.objects
        return {"shape": only.shape, "colour": only.colour, "background": self.background, "style": self.style}


# ---------------------------------------------------------------------------------------------
# Concept names


@functools.cache
def _word_to_concept() -> dict[str, str]:
    return {word: concept for concept, words in SYNONYMS.items() for word in words}


def _kind_of(concept: str) -> Kind:
    return next(kind for kind in KINDS if concept in ATTRIBUTES[kind])


def unknown_concept_error(name: str, kinds: tuple[Kind, ...] = KINDS) -> ConfigError:
    """The error for a word that names no concept of ``kinds``: it suggests close matches and lists the known names."""
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
        raise unknown_concept_error(name)
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
    """Which shape, colour, background and style a prompt names, e.g. ``"a violet disc, stripy
    backdrop"`` → ``{"shape": "circle", "colour": "purple", "background": "striped"}``.

    Kinds the prompt does not name are absent. A kind named twice with different words (a
    two-object prompt) keeps its first mention; ``parse_objects`` reads every object and
    ``named_concepts`` every word. Note that "white" names the plain (white) background.
    """
    found: dict[str, str] = {}
    for concept in named_concepts(prompt):
        found.setdefault(_kind_of(concept), concept)
    return found


def parse_objects(prompt: str) -> list[tuple[str, str | None]]:
    """The objects a prompt names, in order: ``(shape, colour or None)`` per shape word, the
    colour being the last colour word since the previous shape (``"a red circle and a blue
    square"`` → ``[("circle", "red"), ("square", "blue")]``; ``"a red object"`` → ``[]``)."""
    objects: list[tuple[str, str | None]] = []
    colour: str | None = None
    for concept in named_concepts(prompt):
        kind = _kind_of(concept)
        if kind == "colour":
            colour = concept
        elif kind == "shape":
            objects.append((concept, colour))
            colour = None
    return objects


# ---------------------------------------------------------------------------------------------
# Captions and prompts


def _with_articles(text: str) -> str:
    """Fix "a" before a vowel ("a orange star" → "an orange star")."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def _check_split(split: Split) -> None:
    if split not in ("train", "heldout"):
        raise ConfigError(f"unknown split {split!r}; use 'train' or 'heldout'")


def _templates(split: Split, objects: int = 1) -> tuple[str, ...]:
    _check_split(split)
    if objects == 1:
        return TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES
    return PAIR_TRAIN_TEMPLATES if split == "train" else PAIR_HELDOUT_TEMPLATES


def _style_templates(split: Split) -> tuple[str, ...]:
    _check_split(split)
    return STYLE_TRAIN_TEMPLATES if split == "train" else STYLE_HELDOUT_TEMPLATES


def caption(scene: Scene, rng: np.random.Generator, split: Split = "train") -> str:
    """A caption naming exactly the scene's objects (left first), background and style (none
    for an unstyled scene).

    The templates are drawn from the split's and each word from its concept's synonyms.
    """
    def word(concept: str) -> str:
        synonyms = SYNONYMS[concept]
        return synonyms[rng.integers(len(synonyms))]

    templates = _templates(split, len(scene.objects))
    template = templates[rng.integers(len(templates))]
    words = {"background": word(scene.background)}
    for index, item in enumerate(scene.objects):
        suffix = "" if index == 0 else str(index + 1)
        words["shape" + suffix], words["colour" + suffix] = word(item.shape), word(item.colour)
    text = fill_template(template, **words)
    if scene.style == UNSTYLED:
        return text
    style_templates = _style_templates(split)
    return with_style(text, word(scene.style), style_templates[rng.integers(len(style_templates))])


def with_style(text: str, style_word: str, template: str = STYLE_TRAIN_TEMPLATES[0]) -> str:
    """``text`` (a caption's object part) with a style named by ``template``: ``with_style("a red
    circle", "sepia")`` → ``"a red circle, in sepia style"``. The word is used as given."""
    return _with_articles(template.format(scene=text, style=style_word))


def fill_template(template: str, **words: str) -> str:
    """``template``'s ``{shape}``/``{colour}``/``{background}`` (and ``{shape2}``/``{colour2}``) slots filled with ``words`` as given
    (not checked against the vocabulary, so paraphrases fit), "a" before a vowel made "an"."""
    return _with_articles(template.format(**words))


def _attribute_word(kind: Kind, word: str) -> str:
    word = " ".join(word.lower().split())
    concept = _word_to_concept().get(word)
    if concept is None:
        raise unknown_concept_error(word, (kind,))
    if _kind_of(concept) != kind:
        raise ConfigError(f"{word!r} is a {_kind_of(concept)}, not a {kind}")
    return word


def prompt_for(
    shape: str | None = None,
    colour: str | None = None,
    background: str | None = None,
    template: str | None = None,
    style: str | None = None,
) -> str:
    """A prompt naming the given attributes; any may be omitted (at least one object attribute
    or the background is needed).

    Without ``template`` the canonical form is used: ``"a red circle on a striped background"``,
    ``"a red circle"``, ``"a circle on a striped background"``, ``"a red object"``,
    ``"a striped background"``. With ``template`` (e.g. one of ``TRAIN_TEMPLATES``), every
    ``{shape}``/``{colour}``/``{background}`` slot it has must be given. ``style`` (not
    ``"unstyled"``, which prompts leave unsaid) adds ``", in {style} style"``. Synonyms are used as
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
        missing = [kind for kind in ("shape", "colour", "background") if "{" + kind + "}" in template and kind not in given]
        if missing:
            raise ConfigError(f"template {template!r} needs {', '.join(missing)}")
        return _styled(fill_template(template, **given), style)
    noun = given.get("shape", "object")
    thing = f"{given['colour']} {noun}" if "colour" in given else noun if "shape" in given else None
    backdrop = f"{given['background']} background" if "background" in given else None
    if thing and backdrop:
        return _styled(_with_articles(f"a {thing} on a {backdrop}"), style)
    return _styled(_with_articles(f"a {thing or backdrop}"), style)


def _styled(text: str, style: str | None) -> str:
    if style is None:
        return text
    word = _attribute_word("style", style)
    if canonical_concept(word) == UNSTYLED:
        return text
    return with_style(text, word)


def pair_prompt(
    first: tuple[str, str], second: tuple[str, str], background: str, template: str = PAIR_TRAIN_TEMPLATES[0], style: str | None = None
) -> str:
    """A two-object prompt: ``first`` and ``second`` are ``(colour, shape)`` words, the first
    drawn on the left. ``pair_prompt(("red", "circle"), ("blue", "square"), "striped")`` →
    ``"a red circle and a blue square on a striped background"``."""
    words = {
        "colour": _attribute_word("colour", first[0]), "shape": _attribute_word("shape", first[1]),
        "colour2": _attribute_word("colour", second[0]), "shape2": _attribute_word("shape", second[1]),
        "background": _attribute_word("background", background),
    }
    return _styled(fill_template(template, **words), style)


# ---------------------------------------------------------------------------------------------
# Splits


def allowed_combinations(split: Split) -> list[tuple[str, str, str]]:
    """The (shape, colour, background) triples a split draws its one-object scenes from, in a fixed order."""
    _check_split(split)
    heldout = split == "heldout"
    return [
        (s, c, b)
        for s in SHAPES
        for c in COLOURS
        for b in BACKGROUNDS
        if ((s, c, b) in HELDOUT_COMBINATIONS) == heldout
    ]


def allowed_shape_pairs(split: Split) -> list[tuple[str, str]]:
    """The ordered (left, right) shape pairs a split draws its two-object scenes from, in a fixed order."""
    _check_split(split)
    heldout = split == "heldout"
    return [(a, b) for a in SHAPES for b in SHAPES if a != b and ((a, b) in HELDOUT_SHAPE_PAIRS) == heldout]
