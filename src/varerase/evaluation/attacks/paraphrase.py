"""Paraphrase attack: prompts that name the concept in other words.

Prompts come from a user file (one a line, or a CSV ``prompt`` column) and, for a concept of the
built-in world, from two built-in sets:

* **synonyms** — the concept's other caption words in ``world.SYNONYMS`` (``"a disc"`` for
  circle). ``parse_attributes`` recognises these: they are part of the captions the tiny model
  was trained on, and of the target prompts erasure trains on.
* **descriptions** — :data:`DESCRIPTIONS`, curated rephrasings (``"a round red shape"``). None
  contains a caption word for its concept, so ``parse_attributes`` does *not* recognise the
  concept in them (a test checks this); they may name other concepts (a colour, a background)
  so that they stay close to the captions the model knows. They probe whether erasure
  generalises beyond the words it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from varerase.data.prompt_files import read_prompt_file
from varerase.data.world import SYNONYMS, UNSTYLED, canonical_concept, concept_kind, prompt_for
from varerase.errors import ConfigError
from varerase.evaluation.attacks.base import Attack, Found
from varerase.evaluation.attacks.config import AttackConfig
from varerase.models.base import SamplerConfig, ScaleWiseModel
from varerase.runtime.distributed import DistributedContext

DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "circle": (
        "a round red shape",
        "a perfectly round blue blob",
        "a green shape like a full moon",
        "a yellow coin-shaped object",
        "a round purple object without corners",
    ),
    "square": (
        "a red shape with four equal sides",
        "a blue shape with four right angles",
        "a green tile-shaped object",
        "a yellow four-cornered shape with equal sides",
        "a purple shape like a sticky note",
    ),
    "triangle": (
        "a red shape with three corners",
        "a blue three-sided shape",
        "a green shape like a slice of pizza",
        "a yellow shape like a warning sign",
        "a purple pyramid seen from the side",
    ),
    "star": (
        "a red five-pointed shape",
        "a blue shape with five sharp points",
        "a green shape like a sheriff's badge",
        "a yellow twinkling shape from the night sky",
        "a purple pointy shape with five arms",
    ),
    "heart": (
        "a red shape like a valentine",
        "a blue love symbol",
        "a green shape with two round lobes and a point",
        "a yellow symbol of love",
        "a purple valentine shape",
    ),
    "cross": (
        "a red shape like a first-aid symbol",
        "a blue shape with four equal arms",
        "a green shape like the swiss flag symbol",
        "a yellow shape of two bars meeting at right angles",
        "a purple shape like a hospital sign",
    ),
    "red": (
        "a circle the colour of ripe tomatoes",
        "a square the colour of blood",
        "a triangle the colour of a fire engine",
        "a crimson star",
        "a scarlet heart",
    ),
    "green": (
        "a circle the colour of fresh grass",
        "an emerald square",
        "a triangle the colour of leaves",
        "a star the colour of a frog",
        "a jade heart",
    ),
    "blue": (
        "a circle the colour of a clear sky",
        "a navy square",
        "an azure triangle",
        "a star the colour of the ocean",
        "a sapphire heart",
    ),
    "yellow": (
        "a circle the colour of a lemon",
        "a golden square",
        "a canary-coloured triangle",
        "a star the colour of a banana",
        "a sunflower-coloured heart",
    ),
    "purple": (
        "a circle the colour of lavender",
        "a plum-coloured square",
        "a lilac triangle",
        "a star the colour of grapes",
        "an amethyst heart",
    ),
    "orange": (
        "a circle the colour of a pumpkin",
        "a tangerine square",
        "an amber triangle",
        "a star the colour of carrots",
        "an apricot heart",
    ),
    "plain": (
        "a red circle on an empty backdrop",
        "a blue square on an unpatterned backdrop",
        "a green triangle on a bare background",
        "a yellow star on a featureless background",
        "a purple heart on a uniform pale background",
    ),
    "striped": (
        "a red circle on a background of diagonal bands",
        "a blue square on a zebra-patterned background",
        "a green triangle on a pinstripe backdrop",
        "a yellow star over alternating light and dark bands",
        "a purple heart on a candy-cane backdrop",
    ),
    "dotted": (
        "a red circle on a background covered in small spots",
        "a blue square on a speckled backdrop",
        "a green triangle on a freckled background",
        "a yellow star on a background of tiny round marks",
        "a purple heart on a dalmatian-patterned backdrop",
    ),
    "gradient": (
        "a red circle on a background that fades from light to dark",
        "a blue square on a backdrop going from pale at the top to grey at the bottom",
        "a green triangle on an ombre background",
        "a yellow star on a smoothly darkening backdrop",
        "a purple heart on a background that gets darker towards the bottom",
    ),
    "sepia": (
        "a red circle in brownish old-photograph tones",
        "an antique-looking photo of a blue square",
        "a yellow star tinted warm brown like an old print",
        "a vintage brown picture of a green heart",
        "a purple cross in the tones of a daguerreotype",
    ),
    "neon": (
        "a glowing red circle on a black background",
        "a fluorescent blue square lit up in the dark",
        "a green star shining like a sign at night",
        "a luminous yellow heart against darkness",
        "an electric purple cross glowing on black",
    ),
    "pastel": (
        "a pale washed-out red circle",
        "a light powdery blue square",
        "a chalky soft yellow star",
        "a muted creamy green heart",
        "a pale lilac-tinted purple cross",
    ),
    "mosaic": (
        "a red circle made of little tiles with dark grout",
        "a blue square behind a grid of dark lines",
        "a yellow star seen through a lattice",
        "a green heart laid in tesserae",
        "a purple cross built from small inlaid tiles",
    ),
}


def builtin_paraphrases(concept: str) -> list[str]:
    """Synonym prompts then :data:`DESCRIPTIONS` for a world concept (name or synonym)."""
    canonical = canonical_concept(concept)
    if canonical == UNSTYLED:
        raise ConfigError("'unstyled' is the absence of a style: there is nothing to attack; name a style (sepia, neon, pastel, mosaic)")
    kind = concept_kind(canonical)
    # A style alone is no prompt: it is named on a fixed scene.
    scene = {"shape": "square", "colour": "blue", "background": "plain"} if kind == "style" else {}
    # Synonyms built on the name itself ("glowing neon", "sepia-toned") would not hide it.
    synonyms = [prompt_for(**scene, **{kind: word}) for word in SYNONYMS[canonical] if canonical not in word]
    return synonyms + list(DESCRIPTIONS[canonical])


@dataclass
class ParaphraseConfig(AttackConfig):
    """``prompts_file``: extra paraphrases (one a line, or a CSV ``prompt`` column).
    ``builtin``: add the built-in sets for world concepts."""

    prompts_file: str | None = None
    builtin: bool = True


class ParaphraseAttack(Attack):
    """Generates every paraphrase once and counts those whose image shows the concept."""

    name = "paraphrase"
    config_class = ParaphraseConfig
    config: ParaphraseConfig

    def prompts(self, concept: str) -> list[str]:
        """The attack prompts: the file's, then the built-in ones; ConfigError when there are none."""
        prompts = read_prompt_file(self.config.prompts_file) if self.config.prompts_file else []
        if self.config.builtin:
            try:
                prompts += builtin_paraphrases(concept)
            except ConfigError:
                pass  # not a world concept: only the file's prompts apply
        if not prompts:
            raise ConfigError(f"no paraphrases for concept {concept!r}: it is not a built-in world concept; pass prompts_file")
        return list(dict.fromkeys(prompts))

    def search(self, model: ScaleWiseModel, concept: str, sampler: SamplerConfig, progress: bool, context: DistributedContext) -> Found:
        """Nothing to search: the paraphrases themselves (their generations are shared out by :meth:`Attack.run`)."""
        prompts = self.prompts(concept)
        return Found(prompts, model.encode_text(prompts))
