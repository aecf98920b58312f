"""Evaluation measures (METHODS.md §7): concept presence and erasure, prompt following, CLIP
score, FID/KID in a detector's feature space, feature diversity.

* **Presence** ``P(c)``: the fraction of images in which a detector finds concept ``c``.
  **Erasure** is ``P_before(c) − P_after(c)``, always reported with both values.
* **Prompt following** (detectors that judge attributes, ``ConceptDetector.attribute_hits``: the
  world detector): an image follows its prompt when the detector sees every attribute the
  prompt names.
* **CLIP score**: ``max(100·cos(image, prompt), 0)`` averaged, reported beside the plain mean
  cosine and the CLIP backbone, since papers disagree on the scale (~30 vs ~0.30).
* **FID / KID**: torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` on
  features from an injected extractor (handed over as the ``feature=`` module), so no Inception
  download or torchvision is needed. For the world the features are the world detector's penultimate layer; for other
  models a CLIP detector's image embeddings. Numbers in different feature spaces are not
  comparable with each other or with Inception FIDs.
* **Feature diversity**: mean pairwise Euclidean distance of detector features (LPIPS needs
  downloaded backbones, so it is not used).
"""

from __future__ import annotations

import warnings
from typing import Mapping, Protocol, Sequence

import torch
from torch import nn

from varerase.data.world import KINDS
from varerase.errors import ConfigError
from varerase.evaluation.detectors.base import ConceptDetector


class FeatureEmbedder(Protocol):
    """Anything that maps images to features: ``WorldDetector``, ``ClipZeroShotDetector``."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Float ``[B, 3, H, W]`` in [0, 1] → ``[B, F]``."""
        ...


class ImageTextEmbedder(Protocol):
    """A CLIP-like model: ``ClipZeroShotDetector`` or any object with these methods."""

    source: str

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm ``[B, D]``."""
        ...

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm ``[T, D]``."""
        ...


# ---------------------------------------------------------------------------------------------
# Presence and erasure


def presence_fractions(detected: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{concept: bool [N]}`` (``ConceptDetector.detect`` output, possibly concatenated over
    batches) → ``{concept: fraction of the N images where it was found}``."""
    return {concept: float(flags.float().mean()) if flags.numel() else 0.0 for concept, flags in detected.items()}


def erasure(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{concept: {"before": P_before, "after": P_after, "erasure": P_before − P_after}}`` for
    the concepts both presence tables have."""
    return {c: {"before": before[c], "after": after[c], "erasure": before[c] - after[c]} for c in before if c in after}


# ---------------------------------------------------------------------------------------------
# Prompt following (detectors that judge attributes: the built-in world's)


def attribute_hits(detector: ConceptDetector, images: torch.Tensor, prompts: Sequence[str]) -> list[dict[str, bool]]:
    """Per image, ``{kind: whether the detector sees the value its prompt names}`` for the
    kinds (shape, colour, background) that prompt names. ``images``: ``[B, 3, H, W]``.

    ConfigError for a detector that cannot judge attributes (``ConceptDetector.attribute_hits``).
    """
    hits = detector.attribute_hits(images, prompts)
    if hits is None:
        raise ConfigError(f"detector {detector.name!r} cannot judge prompt following; use the world detector")
    return hits


def prompt_following(hits: Sequence[Mapping[str, bool]]) -> dict[str, float | int | None]:
    """Summary of ``attribute_hits`` rows: ``accuracy`` (every named attribute right) over the
    images whose prompt names at least one attribute, the same per kind over the images naming
    that kind (None where none does), and ``num_images`` counted."""
    named = [h for h in hits if h]
    out: dict[str, float | int | None] = {
        "accuracy": sum(all(h.values()) for h in named) / len(named) if named else None,
        "num_images": len(named),
    }
    for kind in KINDS:
        rows = [h[kind] for h in named if kind in h]
        out[kind] = sum(rows) / len(rows) if rows else None
    return out


# ---------------------------------------------------------------------------------------------
# CLIP score


def clip_cosines(clip: ImageTextEmbedder, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Cosine similarity ``[B]`` between each image ``[B, 3, H, W]`` and its own prompt."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
    return (clip.image_embeddings(images) * clip.text_embeddings(prompts)).sum(dim=-1).cpu()


def clip_score(cosines: torch.Tensor, backbone: str) -> dict[str, float | str]:
    """Summary of ``clip_cosines`` ``[N]``: ``clip_score`` = mean of ``max(100·cos, 0)`` (the
    torchmetrics/MACE scale) and ``cosine`` = mean cosine, with the scale and backbone named."""
    return {
        "clip_score": float((100.0 * cosines).clamp(min=0).mean()),
        "cosine": float(cosines.mean()),
        "scale": "clip_score = mean(max(100 × cosine, 0)); cosine = mean cosine",
        "backbone": backbone,
    }


# ---------------------------------------------------------------------------------------------
# Feature-space distances and diversity


class _Identity(nn.Module):
    """The ``feature=`` module handed to torchmetrics: features ``[N, F]`` are extracted before."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class FeatureDistances:
    """FID and KID between reference ("real") and generated images in ``embedder``'s feature
    space, accumulated over batches.

    ``update(images [B, 3, H, W] in [0, 1], real)`` extracts features with ``embedder.embed``;
    ``compute()`` runs torchmetrics' FID and KID on them (needs at least two images per side).
    KID uses ``kid_subsets`` random subsets of ``min(kid_subset_size, N_real, N_fake)`` images,
    drawn with ``seed`` so that repeated computations agree.
    """

    def __init__(self, embedder: FeatureEmbedder, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0) -> None:
        self.embedder = embedder
        self.kid_subsets, self.kid_subset_size, self.seed = kid_subsets, kid_subset_size, seed
        self._features: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add a batch of reference (``real=True``) or generated images ``[B, 3, H, W]``."""
        with torch.no_grad():
            self.update_features(self.embedder.embed(images), real)

    def update_features(self, features: torch.Tensor, real: bool) -> None:
        """Add already-extracted features ``[B, F]``."""
        self._features[real].append(features.detach().double().cpu())

    def compute(self) -> dict[str, float | int]:
        """``{"fid", "kid_mean", "kid_std", "num_real", "num_fake", "feature_dim"}``."""
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        real, fake = (torch.cat(self._features[side]) if self._features[side] else torch.zeros(0, 0) for side in (True, False))
        if len(real) < 2 or len(fake) < 2:
            raise ValueError(f"FID/KID need at least 2 images per side, got {len(real)} reference and {len(fake)} generated")
        dim = real.shape[1]
        # sync_on_compute=False: under torchrun every rank already holds every feature; torchmetrics
        # would otherwise gather them from all ranks again and count each image N times.
        fid = FrechetInceptionDistance(feature=_Identity(dim), normalize=True, sync_on_compute=False)
        with warnings.catch_warnings():  # "will save all extracted features": they are already in memory
            warnings.simplefilter("ignore", UserWarning)
            kid = KernelInceptionDistance(
                feature=_Identity(dim), subsets=self.kid_subsets, subset_size=min(self.kid_subset_size, len(real), len(fake)),
                normalize=True, sync_on_compute=False,
            )
        for metric in (fid, kid):
            metric.update(real, real=True)
            metric.update(fake, real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            kid_mean, kid_std = kid.compute()
        return {
            "fid": float(fid.compute()),
            "kid_mean": float(kid_mean),
            "kid_std": float(kid_std),
            "num_real": len(real),
            "num_fake": len(fake),
            "feature_dim": int(dim),
        }


def feature_diversity(features: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance of ``features`` ``[N, F]`` (0.0 for fewer than 2 rows)."""
    if len(features) < 2:
        return 0.0
    return float(torch.pdist(features.double()).mean())
