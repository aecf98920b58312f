"""Concept specs for the built-in world: target prompts, anchors and a retain set, built automatically.

The scenes are every (shape, colour, background) unstyled, then every (shape, colour) once per
style with the background rotating (:func:`world_scenes`). For ``--concept circle`` the targets
are the scenes' captions that name a circle (templates rotating), each paired with an anchor that
replaces the circle by another shape (cycling through the others, so no single replacement
dominates); for a style (``--concept sepia``) the anchor is the same caption without its style,
the unstyled image the papers' "painting" anchor stands for. The retain set holds captions naming
none of the erased concepts. Several concepts at once (multi-concept erasure) replace
*every* erased concept an anchor would otherwise still name. Paraphrase candidates
(:func:`paraphrase_concept_prompts`) are the target prompts with the concept's word replaced by
each of its ``PARAPHRASES``, words no caption uses. Co-occurrence prompts
(:func:`cooccurrence_prompts`) show an object named by an erased shape or colour beside one that
names no erased concept, to check that erasing the first leaves the second drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Sequence

from varerase.data.pairs import PromptPair
from varerase.data.world import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    HELDOUT_TEMPLATES,
    KINDS,
    OBJECT_KINDS,
    PAIR_TRAIN_TEMPLATES,
    PARAPHRASES,
    SHAPES,
    STYLE_HELDOUT_TEMPLATES,
    STYLE_TRAIN_TEMPLATES,
    STYLES,
    TRAIN_TEMPLATES,
    UNSTYLED,
    canonical_concept,
    concept_kind,
    fill_template,
    pair_prompt,
    prompt_for,
    with_style,
)


@dataclass(frozen=True)
class ConceptPrompts:
    """Prompts for erasing (and then measuring) a set of world concepts."""

    concepts: tuple[str, ...]
    pairs: tuple[PromptPair, ...]
    retain: tuple[str, ...]


def _replacement(value: str, erased: set[str], turn: int) -> str:
    kind = concept_kind(value)
    if kind == "style":
        return UNSTYLED
    others = [v for v in ATTRIBUTES[kind] if v not in erased]
    return others[turn % len(others)]


def world_scenes() -> list[dict[str, str]]:
    """The scenes concept prompts are built from, ``{shape, colour, background, style}`` each: the
    144 unstyled (shape, colour, background) triples, then the 36 (shape, colour) pairs per style
    with the background rotating (288 more), in a fixed order."""
    scenes = [dict(zip(("shape", "colour", "background", "style"), (*triple, UNSTYLED))) for triple in product(SHAPES, COLOURS, BACKGROUNDS)]
    for turn, (style, shape, colour) in enumerate(product(STYLES[1:], SHAPES, COLOURS)):
        scenes.append({"shape": shape, "colour": colour, "background": BACKGROUNDS[turn % len(BACKGROUNDS)], "style": style})
    return scenes


def _scene_prompt(attributes: dict[str, str], template: str, style_template: str) -> str:
    text = prompt_for(template=template, shape=attributes["shape"], colour=attributes["colour"], background=attributes["background"])
    return text if attributes["style"] == UNSTYLED else with_style(text, attributes["style"], style_template)


def world_concept_prompts(
    concepts: Sequence[str], templates: Sequence[str] = TRAIN_TEMPLATES, style_templates: Sequence[str] = STYLE_TRAIN_TEMPLATES
) -> ConceptPrompts:
    """Pairs and retain prompts for erasing ``concepts`` (names or synonyms) from the world.

    Deterministic: the same concepts and templates always give the same prompts, in order.
    """
    erased = tuple(dict.fromkeys(canonical_concept(c) for c in concepts))
    if not erased:
        raise ValueError("name at least one concept")
    if UNSTYLED in erased:
        raise ValueError("'unstyled' is the absence of a style and cannot be erased; name a style (sepia, neon, pastel, mosaic)")
    erased_set = set(erased)
    for kind in KINDS:
        if set(ATTRIBUTES[kind]) <= erased_set:
            raise ValueError(f"cannot erase every {kind}: no anchor would be left")
    pairs: list[PromptPair] = []
    retain: list[str] = []
    for turn, attributes in enumerate(world_scenes()):
        template = templates[turn % len(templates)]
        style_template = style_templates[turn % len(style_templates)]
        named = [v for v in attributes.values() if v in erased_set]
        text = _scene_prompt(attributes, template, style_template)
        if not named:
            retain.append(text)
            continue
        anchor = {k: (_replacement(v, erased_set, turn) if v in erased_set else v) for k, v in attributes.items()}
        pairs.append(PromptPair(text, _scene_prompt(anchor, template, style_template), concept=named[0]))
    return ConceptPrompts(erased, tuple(pairs), tuple(retain))


def heldout_concept_prompts(concepts: Sequence[str]) -> ConceptPrompts:
    """The same construction with the held-out templates (never used in training)."""
    return world_concept_prompts(concepts, HELDOUT_TEMPLATES, STYLE_HELDOUT_TEMPLATES)


def paraphrase_concept_prompts(concepts: Sequence[str]) -> list[tuple[str, str]]:
    """``(prompt, concept)`` candidates naming each erased concept only through a paraphrase.

    For each erased concept ``c``, word by word of ``PARAPHRASES[c]``: every scene naming ``c``
    (:func:`world_scenes`, with the rotating training templates of :func:`world_concept_prompts`)
    with that word for ``c`` and the other attributes by their names (other erased concepts too).
    Word-major, so that evenly spaced picks of a few candidates still cover every word.
    Deterministic; ``len = Σ_c scenes(c) · |PARAPHRASES[c]|``.
    """
    erased = tuple(dict.fromkeys(canonical_concept(c) for c in concepts))
    if not erased:
        raise ValueError("name at least one concept")
    scenes = [
        (attributes, TRAIN_TEMPLATES[turn % len(TRAIN_TEMPLATES)], STYLE_TRAIN_TEMPLATES[turn % len(STYLE_TRAIN_TEMPLATES)])
        for turn, attributes in enumerate(world_scenes())
    ]
    candidates = []
    for concept in erased:
        kind = concept_kind(concept)
        for word in PARAPHRASES[concept]:
            for attributes, template, style_template in scenes:
                if attributes[kind] != concept:
                    continue
                words = {k: v for k, v in attributes.items() if k != "style"}
                if kind == "style":
                    candidates.append((with_style(fill_template(template, **words), word, style_template), concept))
                else:
                    text = fill_template(template, **{**words, kind: word})
                    styled = text if attributes["style"] == UNSTYLED else with_style(text, attributes["style"], style_template)
                    candidates.append((styled, concept))
    return candidates


def _cooccurrence_turns(concept: str, erased: set[str], count: int) -> list[str]:
    """Turns ``0 … count − 1`` of :func:`cooccurrence_prompts` for ``concept`` (``[]`` when no scene fits)."""
    kind = concept_kind(concept)
    other_kind = "colour" if kind == "shape" else "shape"
    values = [v for v in ATTRIBUTES[other_kind] if v not in erased]  # the erased object's other attribute
    others = [v for v in ATTRIBUTES[kind] if v not in erased]  # the other object's value of the concept's kind
    backgrounds = [b for b in BACKGROUNDS if b not in erased]
    if len(values) < 2 or not others or not backgrounds:
        return []
    prompts = []
    n = len(values)
    for turn in range(count):
        block = turn // n
        erased_object = {kind: concept, other_kind: values[turn % n]}
        # The other object's other-kind value is a different one, 1 to n − 1 steps after the erased
        # object's, a step more each block; its concept-kind value advances two more each block,
        # so the other object meets every colour with every shape instead of repeating a few pairs.
        other_object = {kind: others[(turn + 2 * block) % len(others)], other_kind: values[(turn + 1 + block % (n - 1)) % n]}
        objects = [(o["colour"], o["shape"]) for o in (erased_object, other_object)]
        first, second = objects if block % 2 == 0 else objects[::-1]
        template = PAIR_TRAIN_TEMPLATES[block % len(PAIR_TRAIN_TEMPLATES)]
        prompts.append(pair_prompt(first, second, backgrounds[(turn // 2) % len(backgrounds)], template))
    return prompts


def cooccurrence_prompts(concepts: Sequence[str], count: int = 36) -> list[str]:
    """``count`` two-object prompts on which erasing ``concepts`` (names or synonyms) should leave
    the other object drawn: the "co-occurrence" evaluation group.

    Each prompt has an *erased object*, named by one erased shape or colour, whose other attribute
    names no erased concept, and an *other object* that names no erased concept; the two have
    different shapes and different colours, the background is not erased and no style is named.
    The erased shapes and colours take turns (prompt ``t`` is turn ``t // m`` of the ``t % m``-th
    of the ``m`` that fit a scene). Turn ``u`` of a concept, with ``V`` the values its erased
    object's other attribute may take (the non-erased colours for a shape, shapes for a colour)
    and block ``b = u // len(V)``: the erased object's other attribute is ``V[u mod len(V)]``, the
    other object's is the ``1 + b mod (len(V) − 1)``-th value after it in ``V`` (cyclically), and
    the other object's value of the concept's kind is the non-erased one at ``u + 2b``
    (cyclically); the erased object is named first (drawn on the left) in even blocks, the
    template is ``PAIR_TRAIN_TEMPLATES[b mod 3]`` and the background the non-erased one at
    ``u // 2``. So 36 prompts of one shape or colour give every value of each of these about
    equally often, and both sides 18 times.

    Deterministic. ``[]`` when no erased concept is a shape or colour (a style or a background
    belongs to no object) or none fits a scene (too many erased of a kind).
    """
    named = list(dict.fromkeys(canonical_concept(c) for c in concepts))
    if not named:
        raise ValueError("name at least one concept")
    erased = set(named)
    turns = [prompts for c in named if concept_kind(c) in OBJECT_KINDS and (prompts := _cooccurrence_turns(c, erased, count))]
    return [prompt for turn in zip(*turns) for prompt in turn][:count]
