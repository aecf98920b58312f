"""Scoring generations with a concept detector: the steps attacks and ISSA share.

* :func:`resolve_concept` — the name a detector scores a concept under (``disc`` → ``circle``);
* :func:`scores_and_presence` — one detector pass gives each image's score and whether the
  concept is present (``score ≥ threshold``);
* :func:`generate_and_detect` — one image per condition row, every row with the same seed, then
  detection; shared out over the ranks under ``torchrun``.
"""

from __future__ import annotations

import torch

from varerase.data.world import canonical_concept
from varerase.errors import ConfigError
from varerase.evaluation.detectors.base import ConceptDetector
from varerase.models.base import SamplerConfig, ScaleWiseModel, TextCondition
from varerase.runtime.distributed import DistributedContext
from varerase.runtime.progress import progress_bar
from varerase.runtime.sharding import map_sharded


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


def scores_and_presence(detector: ConceptDetector, images: torch.Tensor, concept: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[B]`` (float, CPU) and presence ``[B]`` (bool) of ``concept`` in ``images`` ``[B, 3, H, W]``.

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
    seed: int,
    batch_size: int,
    progress: bool = True,
    context: DistributedContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate one image per row of ``cond`` (every row with ``seed``, ``batch_size`` rows per call) and detect ``concept``.

    Each row has its own generator, so an image does not depend on its batch. Under torchrun
    each rank generates and scores whole batches (the single-process batches, so the images are
    bit for bit a single process's), and every rank gets all rows in order (:func:`map_sharded`).
    Returns images ``[N, 3, H, W]`` (CPU), scores ``[N]`` and presence ``[N]`` (bool).
    """
    batches = [list(range(start, min(start + batch_size, cond.batch_size))) for start in range(0, cond.batch_size, batch_size)]

    def generate_batches(indices: list[int]) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        done = []
        with progress_bar(progress, transient=True) as bar:
            task = bar.add_task("generate + detect", total=sum(len(batches[i]) for i in indices))
            for i in indices:
                batch = cond.select(batches[i])
                with torch.no_grad():
                    images = model.generate(batch, sampler, seed=[seed] * batch.batch_size).images
                scores, present = scores_and_presence(detector, images, concept)
                done.append(list(zip(images.float().cpu(), scores, present)))
                bar.advance(task, batch.batch_size)
        return done

    shares = map_sharded(generate_batches, len(batches), context or DistributedContext.current())
    images, scores, present = zip(*(row for batch in shares for row in batch))
    return torch.stack(images), torch.stack(scores), torch.stack(present)
