"""What every attack shares: its configuration, its result, the attack success rate, the prompts
it attacks, and the final step — generate from the attack's conditions, then detect.

ASR (METHODS.md §7) is the fraction of attack prompts whose generation shows the concept: each
attack prompt (or optimised condition) is generated once, with the configured seed, and the
detector decides whether the concept is in the image.

Under ``torchrun`` the ranks share the work and all end with the single-process result: each
attack's searches (one per attacked prompt, independent of each other) and the final
generations are dealt out row by row and gathered back in order
(:func:`~varerase.runtime.sharding.map_sharded`); rank 0 writes.
"""

from __future__ import annotations

import abc
import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from varerase.config import dataclass_from_dict
from varerase.data.concepts import world_concept_prompts
from varerase.data.pairs import PromptPair, load_pairs
from varerase.data.world import canonical_concept
from varerase.errors import ConfigError, DataError
from varerase.evaluation.detectors.base import ConceptDetector
from varerase.imaging import save_grid
from varerase.io import atomic_write_json
from varerase.models.base import SamplerConfig, ScaleWiseModel, TextCondition
from varerase.runtime.distributed import DistributedContext
from varerase.runtime.progress import progress_bar
from varerase.runtime.sharding import map_sharded

# Prompts → encoded condition; ``ScaleWiseModel.encode_text`` has this type.
Encode = Callable[[list[str]], TextCondition]


@dataclass
class AttackConfig:
    """Settings every attack has.

    ``seed``: the sampling seed of every final generation (one image per attack prompt; each row
    has its own generator, so an image does not depend on its batch). ``batch_size``: prompts
    per ``generate`` call.
    """

    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {self.batch_size}")


@dataclass
class TargetPromptsConfig(AttackConfig):
    """Attacks that start from target prompts ``c_u`` (and their anchors ``c_a``).

    ``pairs_file``: prompt pairs (S-VARE or EAR format) whose targets show the concept; without
    it, a world concept uses :func:`~varerase.data.concepts.world_concept_prompts`.
    ``num_prompts``: how many pairs to attack, spread evenly over the list (0 = all).
    """

    pairs_file: str | None = None
    num_prompts: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_prompts < 0:
            raise ConfigError(f"num_prompts must be ≥ 0 (0 = all), got {self.num_prompts}")


@dataclass
class AttackResult:
    """What an attack found and how often it worked.

    ``prompts``: the attack prompts (for the soft-prompt attack: the prompts its optimised
    features started from). ``detected[i]``: whether prompt ``i``'s generation shows the concept;
    ``scores[i]``: the detector's score for it. ``asr = mean(detected)``. ``settings``: attack,
    concept, resolved config, detector, sampler, model fingerprint and per-prompt search details.
    ``images``: ``[N, 3, H, W]`` in [0, 1] on the CPU, or None.
    """

    prompts: list[str]
    detected: list[bool]
    asr: float
    settings: dict[str, Any]
    images: torch.Tensor | None = None
    scores: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Everything but the images, as JSON-ready data."""
        rows = [{"prompt": p, "detected": d, "score": s} for p, d, s in zip(self.prompts, self.detected, self.scores)]
        return {"asr": self.asr, "num_prompts": len(self.prompts), "prompts": rows, "settings": self.settings}


def attack_success_rate(detected: Sequence[bool]) -> float:
    """Fraction of attack prompts whose generation shows the concept (METHODS.md §7)."""
    if len(detected) == 0:
        raise ValueError("no attack prompts: the attack success rate of an empty set is undefined")
    return sum(bool(d) for d in detected) / len(detected)


def make_config(config_class: type[AttackConfig], config: AttackConfig | dict[str, Any] | None) -> AttackConfig:
    """A ``config_class`` from None (defaults), a dict (YAML / CLI overrides) or an instance."""
    if config is None:
        return config_class()
    if isinstance(config, config_class):
        return config
    if isinstance(config, dict):
        return dataclass_from_dict(config_class, config, config_class.__name__)
    raise ConfigError(f"expected a {config_class.__name__} or a dict of its settings, got {type(config).__name__}")


# ---------------------------------------------------------------------------------------------
# Concepts, prompts and text features


def resolve_concept(concept: str, detector: ConceptDetector) -> str:
    """The name ``detector`` scores ``concept`` under: itself, or its world canonical name (``disc`` → ``circle``)."""
    if concept in detector.concepts:
        return concept
    try:
        canonical = canonical_concept(concept)
    except ConfigError:
        canonical = None
    if canonical in detector.concepts:
        return canonical
    raise ConfigError(f"detector {detector.name!r} does not score {concept!r}; it scores: {', '.join(detector.concepts)}")


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


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a text file (one a line; blank lines and ``#`` comments skipped) or a CSV with a ``prompt`` column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise DataError(f"cannot read prompt file {path}: {error}") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if "prompt" not in (reader.fieldnames or []):
            raise DataError(f"{path}: a CSV prompt file needs a 'prompt' column; found {reader.fieldnames}")
        prompts = [row["prompt"].strip() for row in reader if (row["prompt"] or "").strip()]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise DataError(f"{path} holds no prompts")
    return prompts


def pooled_features(cond: TextCondition) -> torch.Tensor:
    """Mean of the real tokens' features: ``[B, T, C]`` → ``[B, C]``."""
    mask = cond.mask.unsqueeze(-1).to(cond.features.dtype)
    return (cond.features * mask).sum(1) / mask.sum(1)


def encode_fresh(model: ScaleWiseModel, prompts: Sequence[str]) -> TextCondition:
    """Encode without the model's per-prompt cache: searches try thousands of candidate prompts,
    which would otherwise all stay cached on the device."""
    with torch.no_grad():
        return model._encode_text_uncached(list(prompts)).to(model.device)


def pooled_embeddings(model: ScaleWiseModel, prompts: Sequence[str], chunk: int = 256) -> torch.Tensor:
    """Pooled text features of many prompts, encoded ``chunk`` at a time: ``[N, C]``."""
    return torch.cat([pooled_features(encode_fresh(model, prompts[i : i + chunk])) for i in range(0, len(prompts), chunk)])


# ---------------------------------------------------------------------------------------------
# Generation, detection and results


def concept_presence(detector: ConceptDetector, images: torch.Tensor, concept: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[B]`` and presence ``[B]`` (bool) of ``concept`` in ``images`` ``[B, 3, H, W]``.

    Presence is ``score ≥ threshold``, the rule of ``ConceptDetector.detect``, applied here so the
    detector runs once for both.
    """
    scores = detector.scores(images)[concept].float().cpu()
    return scores, scores >= detector.threshold


def generate_and_detect(
    model: ScaleWiseModel,
    cond: TextCondition,
    concept: str,
    detector: ConceptDetector,
    sampler: SamplerConfig,
    config: AttackConfig,
    progress: bool = True,
    context: DistributedContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate one image per row of ``cond`` (seed ``config.seed``) and detect ``concept``.

    Under torchrun each rank generates and scores whole batches of ``config.batch_size`` rows
    (the single-process batches, so the images are bit for bit a single process's), and every rank
    gets all rows in order (:func:`map_sharded`).
    Returns images ``[N, 3, H, W]`` (CPU), scores ``[N]`` and presence ``[N]`` (bool).
    """
    batches = [list(range(start, min(start + config.batch_size, cond.batch_size))) for start in range(0, cond.batch_size, config.batch_size)]

    def generate_batches(indices: list[int]) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        done = []
        with progress_bar(progress, transient=True) as bar:
            task = bar.add_task("generate + detect", total=sum(len(batches[i]) for i in indices))
            for i in indices:
                batch = cond.select(batches[i])
                with torch.no_grad():
                    images = model.generate(batch, sampler, seed=[config.seed] * batch.batch_size).images
                scores, present = concept_presence(detector, images, concept)
                done.append(list(zip(images.float().cpu(), scores, present)))
                bar.advance(task, batch.batch_size)
        return done

    shares = map_sharded(generate_batches, len(batches), context or DistributedContext.current())
    images, scores, present = zip(*(row for batch in shares for row in batch))
    return torch.stack(images), torch.stack(scores), torch.stack(present)


@dataclass
class Found:
    """What an attack's search found: ``condition`` holds one row per entry of ``prompts``;
    ``details`` (per-prompt search traces) go into the result's settings."""

    prompts: list[str]
    condition: TextCondition
    details: dict[str, Any] = field(default_factory=dict)


class Attack(abc.ABC):
    """An attack on a (possibly edited) model: finds prompts or conditions that bring a concept back.

    Subclasses set ``name`` and ``config_class`` and implement :meth:`search`; :meth:`run`
    generates from what the search found, detects, and scores.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[AttackConfig]] = AttackConfig

    def __init__(self, config: AttackConfig | dict[str, Any] | None = None) -> None:
        self.config = make_config(self.config_class, config)

    @abc.abstractmethod
    def search(self, model: ScaleWiseModel, concept: str, sampler: SamplerConfig, progress: bool, context: DistributedContext) -> Found:
        """Find attack prompts or conditions for ``concept`` (a name the detector scores).

        Under torchrun every rank calls this and must return the same :class:`Found`; searches
        for different prompts are independent, so they are shared out with :func:`map_sharded`.
        """

    def run(
        self,
        model: ScaleWiseModel,
        concept: str,
        detector: ConceptDetector,
        sampler: SamplerConfig,
        *,
        progress: bool = True,
        context: DistributedContext | None = None,
    ) -> AttackResult:
        """Attack ``model`` for ``concept`` (a name ``detector`` scores, or a world synonym).

        ``context``: the ranks sharing the work (default: the process group already joined, or
        none); every rank must call this, and every rank returns the single-process result.
        Progress shows on rank 0 only.
        """
        context = context or DistributedContext.current()
        progress = progress and context.is_main
        concept = resolve_concept(concept, detector)
        found = self.search(model, concept, sampler, progress, context)
        images, scores, present = generate_and_detect(model, found.condition, concept, detector, sampler, self.config, progress, context)
        detected = [bool(p) for p in present]
        settings = {
            "attack": self.name,
            "concept": concept,
            "config": asdict(self.config),
            "detector": detector.describe(),
            "sampler": asdict(sampler),
            "model_fingerprint": model.fingerprint(),
            **found.details,
        }
        return AttackResult(found.prompts, detected, attack_success_rate(detected), settings, images, scores.tolist())


def save_attack(result: AttackResult, out_dir: str | Path) -> Path:
    """Write ``attack.json`` and, with images, ``attack_images.png`` (one tile per prompt, in order) atomically."""
    out_dir = Path(out_dir)
    if result.images is not None:
        save_grid(result.images, out_dir / "attack_images.png", columns=min(8, len(result.images)))
    return atomic_write_json(result.to_json(), out_dir / "attack.json")
