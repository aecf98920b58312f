"""The built-in model's quality table: prompt following on held-out prompts, detector accuracy, speed.

Held-out prompts use the templates training never saw, over every attribute combination
(the held-out combinations included). An image agrees with its prompt on an attribute when the
world detector predicts the value the prompt names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import product

import torch

from varerase.data.world import BACKGROUNDS, COLOURS, HELDOUT_TEMPLATES, KINDS, SHAPES, prompt_for
from varerase.data.world_rendering import make_dataset, to_float_images
from varerase.evaluation.detectors.world_detector import WorldDetector
from varerase.evaluation.metrics import attribute_hits, prompt_following
from varerase.models.base import SamplerConfig, ScaleWiseModel

# Bars the built-in model is held to (a benchmark, not a test).
BARS = {"shape": 0.90, "colour": 0.95, "background": 0.95, "detector": 0.99, "seconds_for_64": 5.0}


@dataclass
class QualityReport:
    agreement: dict[str, float]
    all_attributes: float
    images: int
    detector_accuracy: dict[str, float]
    seconds_for_64: float

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(measure, value, bar, verdict) rows of the table."""
        rows = []
        for kind in KINDS:
            value, bar = self.agreement[kind], BARS[kind]
            rows.append((f"{kind} agreement ({self.images} images)", f"{value:.1%}", f"≥ {bar:.0%}", "met" if value >= bar else f"missed by {bar - value:.1%}"))
        rows.append(("all three attributes", f"{self.all_attributes:.1%}", "–", "–"))
        worst = min(self.detector_accuracy.values())
        detector_verdict = "met" if worst >= BARS["detector"] else "missed"
        rows.append(("detector on fresh world images (worst head)", f"{worst:.2%}", f"≥ {BARS['detector']:.0%}", detector_verdict))
        speed_verdict = "met" if self.seconds_for_64 <= BARS["seconds_for_64"] else "missed"
        rows.append(("64 images, 2 cores", f"{self.seconds_for_64:.2f} s", f"≤ {BARS['seconds_for_64']:.0f} s", speed_verdict))
        return rows


def heldout_prompts() -> list[tuple[str, dict[str, str]]]:
    """Every combination under every held-out template: ``(prompt, attributes)``."""
    prompts = []
    for shape, colour, background in product(SHAPES, COLOURS, BACKGROUNDS):
        attributes = {"shape": shape, "colour": colour, "background": background}
        prompts += [(prompt_for(template=t, **attributes), attributes) for t in HELDOUT_TEMPLATES]
    return prompts


@torch.no_grad()
def measure_quality(
    model: ScaleWiseModel,
    detector: WorldDetector,
    sampler: SamplerConfig | None = None,
    samples_per_prompt: int = 2,
    batch_size: int = 64,
    seed: int = 1000,
) -> QualityReport:
    """Generate ``samples_per_prompt`` images per held-out prompt and score them (see module docstring)."""
    sampler = sampler or model.default_sampler
    prompts = [(p, a) for p, a in heldout_prompts() for _ in range(samples_per_prompt)]
    texts = [p for p, _ in prompts]
    images = model.generate_images(texts, [seed + i for i in range(len(texts))], sampler, batch_size)
    hits = attribute_hits(detector, images, texts)
    following = prompt_following(hits)
    fresh = make_dataset(2000, seed=seed + 77)
    labels = torch.stack([torch.as_tensor(fresh.labels[k]) for k in KINDS], dim=1)
    predicted = detector.predict(to_float_images(fresh.images))
    detector_accuracy = {k: float((predicted[k] == labels[:, i]).float().mean()) for i, k in enumerate(KINDS)}
    cond = model.encode_text([p for p, _ in prompts[:64]])
    started = time.perf_counter()
    model.generate(cond, sampler, seed=0)
    seconds = time.perf_counter() - started
    return QualityReport({k: following[k] for k in KINDS}, following["accuracy"], len(prompts), detector_accuracy, seconds)
