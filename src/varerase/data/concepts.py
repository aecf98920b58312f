"""Concept specs for the built-in world: target prompts, anchors and a retain set, built automatically.

For ``--concept circle`` the targets are captions that name a circle (every colour × background,
templates rotating), each paired with an anchor that replaces the circle by another shape
(cycling through the others, so no single replacement dominates); the retain set holds captions
naming none of the erased concepts. Several concepts at once (multi-concept erasure) replace
*every* erased concept an anchor would otherwise still name. Paraphrase candidates
(:func:`paraphrase_concept_prompts`) are the target prompts with the concept's word replaced by
each of its ``PARAPHRASES``, words no caption uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Sequence

from varerase.data.pairs import PromptPair
from varerase.data.world import (
    ATTRIBUTES,
    HELDOUT_TEMPLATES,
    KINDS,
    PARAPHRASES,
    TRAIN_TEMPLATES,
    canonical_concept,
    concept_kind,
    fill_template,
    prompt_for,
)


@dataclass(frozen=True)
class ConceptPrompts:
    """Prompts for erasing (and then measuring) a set of world concepts."""

    concepts: tuple[str, ...]
    pairs: tuple[PromptPair, ...]
    retain: tuple[str, ...]


def _replacement(value: str, erased: set[str], turn: int) -> str:
    kind = concept_kind(value)
    others = [v for v in ATTRIBUTES[kind] if v not in erased]
    return others[turn % len(others)]


def world_concept_prompts(concepts: Sequence[str], templates: Sequence[str] = TRAIN_TEMPLATES) -> ConceptPrompts:
    """Pairs and retain prompts for erasing ``concepts`` (names or synonyms) from the world.

    Deterministic: the same concepts and templates always give the same prompts, in order.
    """
    erased = tuple(dict.fromkeys(canonical_concept(c) for c in concepts))
    if not erased:
        raise ValueError("name at least one concept")
    erased_set = set(erased)
    for kind in KINDS:
        if set(ATTRIBUTES[kind]) <= erased_set:
            raise ValueError(f"cannot erase every {kind}: no anchor would be left")
    pairs: list[PromptPair] = []
    retain: list[str] = []
    for turn, scene in enumerate(product(*(ATTRIBUTES[k] for k in KINDS))):
        attributes = dict(zip(KINDS, scene))
        template = templates[turn % len(templates)]
        named = [v for v in scene if v in erased_set]
        text = prompt_for(template=template, **attributes)
        if not named:
            retain.append(text)
            continue
        anchor = {k: (_replacement(v, erased_set, turn) if v in erased_set else v) for k, v in attributes.items()}
        pairs.append(PromptPair(text, prompt_for(template=template, **anchor), concept=named[0]))
    return ConceptPrompts(erased, tuple(pairs), tuple(retain))


def heldout_concept_prompts(concepts: Sequence[str]) -> ConceptPrompts:
    """The same construction with the held-out templates (never used in training)."""
    return world_concept_prompts(concepts, HELDOUT_TEMPLATES)


def paraphrase_concept_prompts(concepts: Sequence[str]) -> list[tuple[str, str]]:
    """``(prompt, concept)`` candidates naming each erased concept only through a paraphrase.

    For each erased concept ``c``, word by word of ``PARAPHRASES[c]``: every scene naming ``c``
    (the order and rotating training templates of :func:`world_concept_prompts`) with that word
    for ``c`` and the other attributes by their names (other erased concepts too). Word-major, so
    that evenly spaced picks of a few candidates still cover every word. Deterministic;
    ``len = Σ_c scenes(c) · |PARAPHRASES[c]|``.
    """
    erased = tuple(dict.fromkeys(canonical_concept(c) for c in concepts))
    if not erased:
        raise ValueError("name at least one concept")
    scenes = [(dict(zip(KINDS, scene)), TRAIN_TEMPLATES[turn % len(TRAIN_TEMPLATES)]) for turn, scene in enumerate(product(*(ATTRIBUTES[k] for k in KINDS)))]
    return [
        (fill_template(template, **{**attributes, concept_kind(concept): word}), concept)
        for concept in erased
        for word in PARAPHRASES[concept]
        for attributes, template in scenes
        if concept in attributes.values()
    ]
