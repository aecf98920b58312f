"""Evaluation measures (METHODS.md §7): concept presence and erasure, prompt following, CLIP
score, FID/KID in a detector's feature space, feature diversity, and the 95 % interval of a rate.

* **Presence** ``P(c)``: the fraction of images in which a detector finds concept ``c``.
  **Erasure** is ``P_before(c) − P_after(c)``, always reported with both values.
* **Prompt following** (detectors that judge attributes, ``ConceptDetector.attribute_hits``: the
  world detector): an image follows its prompt when the detector sees every attribute the
  prompt names.
* **Co-occurrence kept** (detectors that name an image's objects, ``predict_objects``: the world
  detector): on a two-object prompt where one object names an erased concept, whether the image
  still shows every object naming none, with its shape and colour (:func:`cooccurrence_kept`).
* **Intervals**: every rate (presence, prompt following, co-occurrence kept) comes with its count, its number of
  images and a 95 % Wilson score interval (:func:`wilson_interval`), which stays inside [0, 1]
  and is not degenerate at 0 % or 100 %, unlike the normal approximation.
* **CLIP score**: ``max(100·cos(image, prompt), 0)`` averaged, reported beside the plain mean
  cosine and the CLIP backbone, since papers disagree on the scale (~30 vs ~0.30).
* **FID / KID**: torchmetrics' ``FrechetInceptionDistance`` on features from an injected
  extractor (handed over as the ``feature=`` module), so no Inception download or torchvision is
  needed, and KID as the unbiased MMD² with torchmetrics' polynomial kernel over *paired* rows
  (:func:`paired_kid`; torchmetrics' KID assumes independent sets, and ours share prompts). For
  the world the features are the world detector's penultimate layer; for other models a CLIP
  detector's image embeddings. Numbers in different feature spaces are not comparable with each
  other or with Inception FIDs. KID is given unscaled (this space gives values of order 1–100,
  not Inception's 10⁻³) with its standard error from random halves of the prompts. FID is
  biased upwards on few images (its covariance estimate), KID is not; below
  :data:`MIN_FID_IMAGES` images a side ``fid_reliable`` is false and tables show KID ± its
  standard error only (the FID value stays in the file).
* **Feature diversity**: mean pairwise Euclidean distance of detector features (LPIPS needs
  downloaded backbones, so it is not used).
"""

from __future__ import annotations

import math
from typing import Collection, Mapping, Protocol, Sequence

import torch
from torch import nn

from varerase.data.world import KINDS, parse_objects
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


MIN_FID_IMAGES = 1000  # images per side below which FID is flagged as unreliable (the bar; Inception FID uses 10k–50k)


# ---------------------------------------------------------------------------------------------
# Rates and their intervals


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of the rate ``successes / n`` (95 % for ``z = 1.96``); ``n ≥ 1``."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 ≤ successes ≤ n and n ≥ 1, got {successes} of {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_summary(successes: int, n: int) -> dict[str, float | int | list[float] | None]:
    """``{"rate", "count", "n", "ci95": [lo, hi]}`` of ``successes`` out of ``n`` (rate and interval None for n = 0)."""
    if n == 0:
        return {"rate": None, "count": 0, "n": 0, "ci95": None}
    return {"rate": successes / n, "count": successes, "n": n, "ci95": list(wilson_interval(successes, n))}


# ---------------------------------------------------------------------------------------------
# Presence and erasure


def presence_fractions(detected: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{concept: bool [N]}`` (``ConceptDetector.detect`` output, possibly concatenated over
    batches) → ``{concept: fraction of the N images where it was found}``."""
    return {concept: float(flags.float().mean()) if flags.numel() else 0.0 for concept, flags in detected.items()}


def presence_intervals(detected: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    """``{concept: bool [N]}`` → ``{concept: rate_summary}`` (count, N and 95 % Wilson interval)."""
    return {concept: rate_summary(int(flags.sum()), flags.numel()) for concept, flags in detected.items()}


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
    images whose prompt names at least one attribute with its ``num_correct`` and 95 % Wilson
    interval ``ci95``, the same per kind (and ``objects``: two-object prompts' bindings) over the
    images naming that kind (None where none does),
    and ``num_images`` counted."""
    named = [h for h in hits if h]
    correct = rate_summary(sum(all(h.values()) for h in named), len(named))
    out: dict[str, float | int | list[float] | None] = {
        "accuracy": correct["rate"],
        "num_correct": correct["count"],
        "num_images": len(named),
        "ci95": correct["ci95"],
    }
    for kind in (*KINDS, "objects"):
        rows = [h[kind] for h in named if kind in h]
        out[kind] = sum(rows) / len(rows) if rows else None
    return out


# ---------------------------------------------------------------------------------------------
# Co-occurrence preservation (detectors that name an image's objects: the built-in world's)


def cooccurrence_kept(prompts: Sequence[str], seen: Sequence[Sequence[tuple[str, str]]], concepts: Collection[str]) -> list[bool | None]:
    """Per image, whether erasing ``concepts`` (canonical names) left the *other* objects of its
    two-object prompt drawn.

    ``seen``: per image, the ``(shape, colour)`` objects a detector finds in it
    (``WorldDetector.predict_objects``). An image qualifies when its prompt names at least two
    objects (``parse_objects``), at least one of them by an erased shape or colour and at least one
    naming neither; it is kept (True) when every object naming neither is among ``seen`` (its
    shape, and its colour when the prompt gives one). None for images that do not qualify.
    """
    if len(prompts) != len(seen):
        raise ValueError(f"{len(prompts)} prompts for {len(seen)} images")
    erased = set(concepts)
    kept: list[bool | None] = []
    for prompt, objects in zip(prompts, seen):
        named = parse_objects(prompt)
        others = [(shape, colour) for shape, colour in named if shape not in erased and colour not in erased]
        if len(named) < 2 or not others or len(others) == len(named):
            kept.append(None)
            continue
        kept.append(all(any(s == shape and colour in (None, c) for s, c in objects) for shape, colour in others))
    return kept


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


def _polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's kernel ``(a·b / F + 1)³`` between rows of ``[N, F]`` and ``[M, F]`` → ``[N, M]`` (as torchmetrics')."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def paired_kid(real: torch.Tensor, fake: torch.Tensor, units: torch.Tensor) -> float:
    """Unbiased MMD² (KID) between paired rows: ``real[i]`` and ``fake[i]`` ``[N, F]`` share unit ``units[i]`` ``[N]``.

    Gretton et al.'s U-statistic ``mean over i, j in different units of k(r_i, r_j) + k(f_i, f_j) −
    k(r_i, f_j) − k(r_j, f_i)``. Rows of one unit (one prompt: its samples, its real image, its
    image by the other model) are not independent draws, so pairs within a unit are left out of
    every term; torchmetrics' estimator keeps the matched cross pairs and comes out negative here.
    """
    different = units[:, None] != units[None, :]
    pairs = int(different.sum())
    if pairs == 0:
        raise ValueError("KID needs rows of at least two different prompts")
    h = _polynomial_kernel(real, real) + _polynomial_kernel(fake, fake) - _polynomial_kernel(real, fake) - _polynomial_kernel(fake, real)
    return float(h[different].sum() / pairs)


class FeatureDistances:
    """FID and KID between reference ("real") and generated images in ``embedder``'s feature
    space, accumulated over batches of *paired* rows: row ``i`` of both sides belongs to the same
    prompt (the same prompt and seed before and after, or a generated image and the real render
    of its caption).

    ``update(real_images, fake_images [B, 3, H, W] in [0, 1], prompts)`` extracts features with
    ``embedder.embed``. ``compute()`` gives torchmetrics' FID on all rows, and KID by
    :func:`paired_kid` on all rows with its standard error from ``kid_subsets`` random halves of
    the prompts (the spread of a half-sample estimate is the standard error of the full one),
    drawn with ``seed`` so that repeated computations agree; halves of at most ``kid_subset_size``
    rows keep the kernel matrices small.
    """

    def __init__(self, embedder: FeatureEmbedder, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0) -> None:
        self.embedder = embedder
        self.kid_subsets, self.kid_subset_size, self.seed = kid_subsets, kid_subset_size, seed
        self._real: list[torch.Tensor] = []
        self._fake: list[torch.Tensor] = []
        self._units: dict[str, int] = {}
        self._rows: list[int] = []

    def update(self, real_images: torch.Tensor, fake_images: torch.Tensor, prompts: Sequence[str]) -> None:
        """Add a batch of paired reference and generated images ``[B, 3, H, W]`` and their prompts."""
        with torch.no_grad():
            self.update_features(self.embedder.embed(real_images), self.embedder.embed(fake_images), prompts)

    def update_features(self, real: torch.Tensor, fake: torch.Tensor, prompts: Sequence[str]) -> None:
        """Add already-extracted paired features ``[B, F]`` (each side) and their ``B`` prompts."""
        if not len(real) == len(fake) == len(prompts):
            raise ValueError(f"paired rows: {len(real)} reference, {len(fake)} generated, {len(prompts)} prompts")
        self._real.append(real.detach().double().cpu())
        self._fake.append(fake.detach().double().cpu())
        self._rows += [self._units.setdefault(p, len(self._units)) for p in prompts]

    def compute(self) -> dict[str, float | int | bool]:
        """``{"fid", "fid_reliable", "kid_mean", "kid_std", "kid_subset_size", "num_real", "num_fake", "num_prompts", "feature_dim"}``.

        ``fid_reliable``: at least :data:`MIN_FID_IMAGES` images a side. ``kid_mean``: on all rows,
        unscaled; ``kid_std``: its standard error (None with fewer than 4 prompts); ``kid_subset_size``:
        rows of one half.
        """
        from torchmetrics.image.fid import FrechetInceptionDistance

        if len(self._rows) < 2 or len(self._units) < 2:
            raise ValueError(f"FID/KID need at least 2 images of 2 prompts per side, got {len(self._rows)} of {len(self._units)}")
        real, fake, units = torch.cat(self._real), torch.cat(self._fake), torch.tensor(self._rows)
        dim = real.shape[1]
        # sync_on_compute=False: under torchrun every rank already holds every feature; torchmetrics
        # would otherwise gather them from all ranks again and count each image N times.
        fid = FrechetInceptionDistance(feature=_Identity(dim), normalize=True, sync_on_compute=False)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        halves, subset_size = [], 0
        if len(self._units) >= 4:
            generator = torch.Generator().manual_seed(self.seed)
            for _ in range(self.kid_subsets):
                chosen = torch.randperm(len(self._units), generator=generator)[: len(self._units) // 2]
                rows = torch.isin(units, chosen).nonzero().squeeze(1)
                rows = rows[torch.randperm(len(rows), generator=generator)[: self.kid_subset_size]]
                subset_size = max(subset_size, len(rows))
                if len(units[rows].unique()) >= 2:
                    halves.append(paired_kid(real[rows], fake[rows], units[rows]))
        return {
            "fid": float(fid.compute()),
            "fid_reliable": len(real) >= MIN_FID_IMAGES,
            "kid_mean": paired_kid(real, fake, units),
            "kid_std": float(torch.tensor(halves, dtype=torch.float64).std()) if len(halves) > 1 else None,
            "kid_subset_size": subset_size,
            "num_real": len(real),
            "num_fake": len(fake),
            "num_prompts": len(self._units),
            "feature_dim": int(dim),
        }


def feature_diversity(features: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance of ``features`` ``[N, F]`` (0.0 for fewer than 2 rows)."""
    if len(features) < 2:
        return 0.0
    return float(torch.pdist(features.double()).mean())
