"""The interface every attack implements: search for prompts or conditions that bring a concept
back, then generate from them and detect (ASR, METHODS.md §7; see :mod:`.result`).

Under ``torchrun`` the ranks share the work and all end with the single-process result: each
attack's searches (one per attacked prompt, independent of each other) and the final
generations are dealt out row by row and gathered back in order
(:func:`~varerase.runtime.sharding.map_sharded`); rank 0 writes.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from varerase.evaluation.attacks.config import AttackConfig, make_config
from varerase.evaluation.attacks.result import AttackResult, attack_success_rate
from varerase.evaluation.detectors.base import ConceptDetector
from varerase.evaluation.scoring import generate_and_detect, resolve_concept
from varerase.models.base import SamplerConfig, ScaleWiseModel, TextCondition
from varerase.runtime.distributed import DistributedContext


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
        images, scores, present = generate_and_detect(
            model, found.condition, concept, detector, sampler, self.config.seed, self.config.batch_size, progress, context
        )
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
