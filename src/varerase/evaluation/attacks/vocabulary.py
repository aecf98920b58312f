"""The word vocabulary discrete prompt searches (Ring-A-Bell, UnlearnDiff) draw tokens from.

Searches work on whole words, not on a text encoder's sub-word tokens: a found prompt is then a
readable string that any model's ``encode_text`` takes, and the same search runs on every text
encoder. The vocabulary is the words of the concept's pair prompts, plus, for a world concept,
every caption word and every word of the built-in paraphrases, plus a user's word file.

By default the words that name the concept are left out (our choice), so that a successful
attack shows the concept coming back through *other* words, not through its own name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from varerase.data.pairs import PromptPair
from varerase.data.prompt_files import read_prompt_file
from varerase.data.world import HELDOUT_TEMPLATES, SYNONYMS, TRAIN_TEMPLATES, named_concepts
from varerase.errors import ConfigError
from varerase.evaluation.attacks.config import TargetPromptsConfig
from varerase.evaluation.attacks.paraphrase import DESCRIPTIONS

_WORD = re.compile(r"[a-z][a-z'\-]*")


@dataclass
class VocabularyConfig(TargetPromptsConfig):
    """``vocabulary_file``: extra words (one a line, or a CSV ``prompt`` column; lines are split
    into words). ``exclude_concept_words``: leave out the words that name the concept."""

    vocabulary_file: str | None = None
    exclude_concept_words: bool = True


def words_of(texts: Sequence[str]) -> list[str]:
    """Lower-case words of ``texts`` in order of first appearance (punctuation dropped)."""
    return list(dict.fromkeys(word for text in texts for word in _WORD.findall(text.lower())))


def names_concept(word: str, concept: str) -> bool:
    """Whether ``word`` names ``concept``: a world caption word for it, or a word of its name."""
    return concept in named_concepts(word) or word in concept.lower().split()


def attack_vocabulary(concept: str, pairs: Sequence[PromptPair], config: VocabularyConfig) -> list[str]:
    """The search vocabulary for ``concept`` given its prompt ``pairs`` (see the module doc)."""
    texts = [prompt for pair in pairs for prompt in (pair.target, pair.anchor)]
    if concept in SYNONYMS:
        templates = [t.format(shape="", colour="", background="") for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES]
        texts += templates + [w for words in SYNONYMS.values() for w in words]
        texts += [d for descriptions in DESCRIPTIONS.values() for d in descriptions]
    if config.vocabulary_file is not None:
        texts += read_prompt_file(config.vocabulary_file)
    words = words_of(texts)
    if config.exclude_concept_words:
        words = [w for w in words if not names_concept(w, concept)]
    if not words:
        raise ConfigError(f"the search vocabulary for {concept!r} is empty; pass vocabulary_file (one word or phrase a line)")
    return words
