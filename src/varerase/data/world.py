"""The captioned synthetic world that the built-in tiny text-to-image model is trained on: its
vocabulary of concepts, scene contents, and captions. Drawing scenes as images is
:mod:`varerase.data.world_rendering`.

Every image shows exactly one object: a shape of one colour on one background. Two objects per
image were left out on purpose: at 32 px there is no room for two objects large enough to tell
their shapes apart, and a single object keeps "which concept does this image show" unambiguous.

The vocabulary of concepts is the three attribute tuples ``SHAPES``, ``COLOURS`` and
``BACKGROUNDS``; every concept name is unique across them. Captions use several templates and a
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
Kind = Literal["shape", "colour", "background"]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "dotted", "gradient")

KINDS: tuple[Kind, ...] = ("shape", "colour", "background")
ATTRIBUTES: dict[Kind, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS}

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
    return fill_template(template, **words)


def fill_template(template: str, **words: str) -> str:
    """``template``'s ``{shape}``/``{colour}``/``{background}`` slots filled with ``words`` as given
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
        return fill_template(template, **given)
    noun = given.get("shape", "object")
    thing = f"{given['colour']} {noun}" if "colour" in given else noun if "shape" in given else None
    backdrop = f"{given['background']} background" if "background" in given else None
    if thing and backdrop:
        return _with_articles(f"a {thing} on a {backdrop}")
    return _with_articles(f"a {thing or backdrop}")


# ---------------------------------------------------------------------------------------------
# Splits


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
