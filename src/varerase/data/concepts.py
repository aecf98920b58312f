"""Concept specs for the built-in world: target prompts, anchors and a retain set, built automatically.

For ``--concept circle`` the targets are captions that name a circle (every colour × background,
templates rotating), each paired with an anchor that replaces the circle by another shape
(cycling through the others, so no single replacement dominates); the retain set holds captions
naming none of the erased concepts. Several concepts at once (multi-concept erasure) replace
*every* erased concept an anchor would otherwise still name.
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
    TRAIN_TEMPLATES,
    canonical_concept,
    concept_kind,
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
