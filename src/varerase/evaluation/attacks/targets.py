"""The target prompts an attack starts from: a concept's prompt pairs, and the ones attacked."""

from __future__ import annotations

from typing import Sequence

from varerase.data.concepts import world_concept_prompts
from varerase.data.pairs import PromptPair, load_pairs
from varerase.errors import ConfigError, DataError
from varerase.evaluation.attacks.config import TargetPromptsConfig


def concept_pairs(concept: str, config: TargetPromptsConfig) -> list[PromptPair]:
    """All pairs for ``concept``: from ``config.pairs_file`` (entries tagged with another concept
    are skipped), else the world's built-in pairs. Raises ConfigError when there are none."""
    if config.pairs_file is not None:
        pairs = [p for p in load_pairs(config.pairs_file) if p.concept in (None, concept)]
        if not pairs:
            raise DataError(f"{config.pairs_file} holds no pairs for concept {concept!r}")
        return pairs
    try:
        return list(world_concept_prompts([concept]).pairs)
    except ConfigError as error:
        raise ConfigError(f"{error}; for a concept outside the built-in world pass pairs_file (S-VARE or EAR prompt pairs)") from None


def attacked_pairs(pairs: Sequence[PromptPair], num_prompts: int) -> list[PromptPair]:
    """``num_prompts`` pairs spread evenly over ``pairs`` (all of them for 0 or more than there are)."""
    if num_prompts == 0 or num_prompts >= len(pairs):
        return list(pairs)
    return [pairs[i * len(pairs) // num_prompts] for i in range(num_prompts)]
