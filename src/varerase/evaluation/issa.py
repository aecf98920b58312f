"""ISSA — incremental semantic saliency analysis (METHODS.md §5, our specification; SACE-inspired).

For a pair ``(c_u, c_a)``, seeds ``s_1..s_n`` and each switch scale ``k = 0..S``, the model
generates with ``c_a`` for scales ``< k`` and ``c_u`` for scales ``≥ k`` (same seed), giving
``x_k``: ``k = 0`` is pure ``c_u``, ``k = S`` pure ``c_a``. With a concept detector ``D``:

* presence curve ``P(k) = mean_{pairs, seeds} 1[D(x_k)]``;
* saliency ``S_k = P(k) − P(k+1)`` for ``k = 0..S−1`` (how much of the concept still arrives
  when ``c_u`` starts at scale ``k`` rather than ``k+1``); the concept "enters" at ``argmax_k S_k``.
  The Semantic Singularity Axiom predicts ``S_0 ≫ S_k`` for ``k ≥ 1``.

Detector-free: per scale ``k``, the mean per-unit ``KL(p(·|c_u, r) ‖ p(·|c_a, r))`` of the
conditional (no CFG) teacher-forced logits, over the positions of scale ``k``, with ``r`` the
``c_u`` generations (``x_0``'s maps). Works on any :class:`ScaleWiseModel`, an ``EditedModel`` too.

Every ``(pair, seed)`` row is generated with its own seed and a pair's seeds form one batch, so
under ``torchrun`` the ranks share whole pairs out and gather them back in order: the curves are
a single process's, bit for bit.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from varerase.data.pairs import PromptPair
from varerase.errors import ConfigError
from varerase.evaluation.detectors.base import ConceptDetector
from varerase.evaluation.scoring import resolve_concept, scores_and_presence
from varerase.imaging import save_grid
from varerase.io import atomic_write_bytes, atomic_write_json
from varerase.models.base import ConditionSwitch, SamplerConfig, ScaleWiseModel, TextCondition
from varerase.models.schedule import scale_token_counts
from varerase.models.units import per_unit_kl
from varerase.runtime.distributed import DistributedContext
from varerase.runtime.progress import progress_bar
from varerase.runtime.sharding import map_sharded

# Strip tiles are downscaled to at most this many pixels a side: a 13-scale Infinity strip of
# 1024² images would otherwise hold 14 full images per seed and pair in memory.
STRIP_SIZE = 128


@dataclass
class IssaPairCurves:
    """One pair's curves. ``kl[k]``, ``k = 0..S−1``; ``presence[k]`` and ``mean_score[k]``,
    ``k = 0..S`` (None without a detector); ``detected[seed][k]``."""

    target: str
    anchor: str
    kl: list[float]
    presence: list[float] | None
    mean_score: list[float] | None
    detected: list[list[bool]] | None


def saliency(presence: Sequence[float]) -> list[float]:
    """``S_k = P(k) − P(k+1)`` for ``k = 0..S−1`` from ``P(0..S)``; they sum to ``P(0) − P(S)``."""
    return [presence[k] - presence[k + 1] for k in range(len(presence) - 1)]


def _mean_curves(curves: Sequence[Sequence[float]]) -> list[float]:
    return torch.tensor(curves, dtype=torch.float64).mean(0).tolist()


@dataclass
class IssaResult:
    """ISSA over pairs and seeds: per-pair curves, their means, and an image strip per pair.

    ``strips[i]``: ``[n_seeds, S+1, 3, h, w]`` images of pair ``i`` (row = seed, column = ``k``),
    at most :data:`STRIP_SIZE` pixels a side. ``concept`` is None for a detector-free run.
    """

    concept: str | None
    seeds: list[int]
    schedule: list[tuple[int, int]]
    pairs: list[IssaPairCurves]
    settings: dict[str, Any]
    strips: list[torch.Tensor]

    @property
    def presence(self) -> list[float] | None:
        """``P(k)``, ``k = 0..S``, averaged over pairs and seeds."""
        if self.concept is None:
            return None
        return _mean_curves([p.presence for p in self.pairs])

    @property
    def saliency(self) -> list[float] | None:
        """``S_k``, ``k = 0..S−1``."""
        return None if self.presence is None else saliency(self.presence)

    @property
    def kl(self) -> list[float]:
        """Mean per-unit KL per scale, ``k = 0..S−1``, averaged over pairs and seeds."""
        return _mean_curves([p.kl for p in self.pairs])

    @property
    def entry_scale(self) -> int | None:
        """``argmax_k S_k``: the scale at which the concept enters (None without a detector)."""
        values = self.saliency
        return None if values is None else max(range(len(values)), key=values.__getitem__)

    def table(self) -> list[dict[str, Any]]:
        """One row per switch scale ``k = 0..S`` (the last is pure ``c_a``; it has no saliency or KL)."""
        presence, salient, kl = self.presence, self.saliency, self.kl
        mean_score = None if presence is None else _mean_curves([p.mean_score for p in self.pairs])
        num_scales = len(self.schedule)
        rows = []
        for k in range(num_scales + 1):
            size = "x".join(map(str, self.schedule[k])) if k < num_scales else "(pure c_a)"
            row: dict[str, Any] = {"k": k, "size": size, "kl": kl[k] if k < num_scales else None}
            if presence is not None:
                row["presence"] = presence[k]
                row["mean_score"] = mean_score[k]
                row["saliency"] = salient[k] if k < num_scales else None
            rows.append(row)
        return rows

    def summary(self) -> str:
        """One sentence: where the concept enters (or where the KL peaks, without a detector)."""
        kl = self.kl
        peak = max(range(len(kl)), key=kl.__getitem__)
        kl_part = f"the c_u/c_a KL peaks at scale {peak} ({kl[peak]:.4f})"
        if self.entry_scale is None:
            return f"Detector-free ISSA: {kl_part}."
        k, presence = self.entry_scale, self.presence
        return (
            f"Concept {self.concept!r} enters at scale {k} ({'x'.join(map(str, self.schedule[k]))}): "
            f"S_{k} = {self.saliency[k]:.3f} of P(0) − P(S) = {presence[0]:.3f} − {presence[-1]:.3f}; {kl_part}."
        )

    def to_json(self) -> dict[str, Any]:
        """Everything but the strips, as JSON-ready data."""
        return {
            "summary": self.summary(),
            "entry_scale": self.entry_scale,
            "table": self.table(),
            "pairs": [asdict(p) for p in self.pairs],
            "settings": self.settings,
        }


def _downscale(images: torch.Tensor) -> torch.Tensor:
    height, width = images.shape[-2:]
    scale = STRIP_SIZE / max(height, width)
    if scale >= 1:
        return images.float().cpu()
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(images.float(), size=size, mode="area").cpu()


def scale_kl(model: ScaleWiseModel, cond_u: TextCondition, cond_a: TextCondition, maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean per-unit ``KL(p(·|c_u, r) ‖ p(·|c_a, r))`` per row and scale under teacher forcing on ``maps``: ``[B, S]``."""
    with torch.no_grad():
        # Two passes, not one padded batch: identical conditions then give exactly zero KL.
        kl = per_unit_kl(model.teacher_forced_logits(cond_u, maps), model.teacher_forced_logits(cond_a, maps))
    per_position = kl.mean(dim=2)  # [B, L]
    return torch.stack([part.mean(dim=1) for part in per_position.split(scale_token_counts(model.schedule), dim=1)], dim=1)


class SwitchRow(NamedTuple):
    """What one seed of one pair gives: ``strip [S+1, 3, h, w]`` (column ``k``), the detector's
    ``scores [S+1]`` and ``present [S+1]`` (None without a detector) and ``kl [S]``."""

    strip: torch.Tensor
    scores: torch.Tensor | None
    present: torch.Tensor | None
    kl: torch.Tensor


def switch_rows(
    model: ScaleWiseModel,
    pair: PromptPair,
    detector: ConceptDetector | None,
    concept: str | None,
    sampler: SamplerConfig,
    seeds: Sequence[int],
    on_scale: Callable[[], None] | None = None,
) -> list[SwitchRow]:
    """ISSA's generations and teacher-forced passes for one pair, one batch of ``seeds``: a row per seed.

    Every row has its own seed, so a row does not depend on the other seeds of its batch.
    ``on_scale()`` is called after each switch scale ``k``.
    """
    n = len(seeds)
    cond_u, cond_a = model.encode_text([pair.target] * n), model.encode_text([pair.anchor] * n)
    columns, scores, present, maps_u = [], [], [], None
    for k in range(len(model.schedule) + 1):
        with torch.no_grad():
            generation = model.generate(cond_a, sampler, seed=list(seeds), switch=ConditionSwitch(k, cond_u))
        if k == 0:
            maps_u = generation.maps
        if detector is not None:
            scores_k, present_k = scores_and_presence(detector, generation.images, concept)
            scores.append(scores_k)
            present.append(present_k)
        columns.append(_downscale(generation.images))
        if on_scale is not None:
            on_scale()
    strips, kl = torch.stack(columns, dim=1), scale_kl(model, cond_u, cond_a, maps_u).cpu()
    if detector is None:
        return [SwitchRow(strips[j], None, None, kl[j]) for j in range(n)]
    scores_t, present_t = torch.stack(scores, dim=1), torch.stack(present, dim=1)  # [n, S+1]
    return [SwitchRow(strips[j], scores_t[j], present_t[j], kl[j]) for j in range(n)]


def pair_curves(pair: PromptPair, rows: Sequence[SwitchRow]) -> IssaPairCurves:
    """A pair's curves from its rows (one per seed): means over the seeds."""
    detected = rows[0].present is not None
    # Column k over the seeds, contiguous: [S+1] tensors of [n_seeds].
    scores = torch.stack([r.scores for r in rows]).T.contiguous() if detected else None
    present = torch.stack([r.present for r in rows]).T.contiguous() if detected else None
    return IssaPairCurves(
        target=pair.target,
        anchor=pair.anchor,
        kl=torch.stack([r.kl for r in rows]).mean(0).tolist(),
        presence=[float(p.float().mean()) for p in present] if detected else None,
        mean_score=[float(s.mean()) for s in scores] if detected else None,
        detected=[r.present.tolist() for r in rows] if detected else None,
    )


def compute_issa(
    model: ScaleWiseModel,
    pairs: Sequence[PromptPair | tuple[str, str]],
    detector: ConceptDetector | None,
    concept: str | None,
    sampler: SamplerConfig,
    seeds: Sequence[int],
    progress: bool = True,
    context: DistributedContext | None = None,
) -> IssaResult:
    """ISSA over ``pairs`` (``PromptPair`` or ``(c_u, c_a)``) and ``seeds``; ``detector=None`` gives the KL curve only.

    Pairs are independent: under torchrun (``context``, default the process group already
    joined) each rank generates and teacher-forces whole pairs, all seeds of a pair in one batch
    as a single process does, and every rank gathers all pairs in order (:func:`map_sharded`),
    so it returns the single-process result bit for bit. Progress shows on rank 0 only.
    """
    pairs = [p if isinstance(p, PromptPair) else PromptPair(*p) for p in pairs]
    if not pairs or not seeds:
        raise ConfigError("ISSA needs at least one prompt pair and one seed")
    if detector is not None:
        if concept is None:
            raise ConfigError(f"name the concept detector {detector.name!r} should look for; it scores: {', '.join(detector.concepts)}")
        concept = resolve_concept(concept, detector)
    else:
        concept = None
    context = context or DistributedContext.current()

    def switch_pairs(indices: list[int]) -> list[list[SwitchRow]]:
        out = []
        with progress_bar(progress and context.is_main, transient=True) as bar:
            task = bar.add_task("ISSA", total=len(indices) * (len(model.schedule) + 1))
            for i in indices:
                out.append(switch_rows(model, pairs[i], detector, concept, sampler, list(seeds), lambda: bar.advance(task)))
        return out

    by_pair = map_sharded(switch_pairs, len(pairs), context)
    results = [pair_curves(pair, pair_rows) for pair, pair_rows in zip(pairs, by_pair)]
    strips = [torch.stack([r.strip for r in pair_rows]) for pair_rows in by_pair]
    settings = {
        "seeds": list(seeds),
        "sampler": asdict(sampler),
        "detector": detector.describe() if detector is not None else None,
        "model_fingerprint": model.fingerprint(),
        "schedule": [list(s) for s in model.schedule],
        "kl": "KL(p(.|c_u, r) || p(.|c_a, r)), conditional teacher-forced logits, r = the c_u generations",
    }
    return IssaResult(concept, list(seeds), [tuple(s) for s in model.schedule], results, settings, strips)


def plot_issa(result: IssaResult, path: str | Path) -> Path:
    """PNG plot: ``P(k)`` and ``S_k`` (with a detector) and the per-scale KL, written atomically."""
    try:
        from matplotlib.figure import Figure  # a Figure draws with Agg and touches no global backend
    except ModuleNotFoundError:
        raise ConfigError("plotting ISSA needs matplotlib: pip install 'varerase[eval]'") from None
    panels = 1 if result.presence is None else 2
    figure = Figure(figsize=(5 * panels, 3.6), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    if result.presence is not None:
        ks = range(len(result.presence))
        axes[0].plot(ks, result.presence, marker="o", label="presence P(k)")
        axes[0].bar(range(len(result.saliency)), result.saliency, alpha=0.4, color="tab:orange", label="saliency S_k")
        axes[0].set(xlabel="switch scale k (c_a before k, c_u from k)", title=f"ISSA: {result.concept}", xticks=list(ks))
        axes[0].legend()
    axes[-1].plot(range(len(result.kl)), result.kl, marker="s", color="tab:green")
    axes[-1].set(xlabel="scale k", ylabel="mean per-unit KL", title="KL(p(.|c_u, r) || p(.|c_a, r))", xticks=list(range(len(result.kl))))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(buffer.getvalue(), path)


def save_issa(result: IssaResult, out_dir: str | Path) -> Path:
    """Write ``issa.json``, ``issa.png`` and ``strips/pair_XX.png`` (row = seed, column = k) into ``out_dir``; returns the JSON path."""
    out_dir = Path(out_dir)
    for i, strip in enumerate(result.strips):
        labels = [f"seed {s}" for s in result.seeds]
        scale = max(1, 64 // strip.shape[-2])  # enlarge small tiles (32 px world images) so a strip is readable
        save_grid(strip.flatten(0, 1), out_dir / "strips" / f"pair_{i:02d}.png", columns=strip.shape[1], scale=scale, row_labels=labels)
    plot_issa(result, out_dir / "issa.png")
    return atomic_write_json(result.to_json(), out_dir / "issa.json")


def run_issa(
    model: ScaleWiseModel,
    pairs: Sequence[PromptPair | tuple[str, str]],
    detector: ConceptDetector | None,
    concept: str | None,
    sampler: SamplerConfig,
    seeds: Sequence[int],
    out_dir: str | Path,
    progress: bool = True,
    context: DistributedContext | None = None,
) -> IssaResult:
    """:func:`compute_issa`, then :func:`save_issa` into ``out_dir`` (the CLI's entry point).

    Under ``torchrun`` the ranks share the pairs out (:func:`compute_issa`); rank 0 writes.
    """
    context = context or DistributedContext.from_environment()
    result = compute_issa(model, pairs, detector, concept, sampler, seeds, progress, context)
    if context.is_main:
        save_issa(result, out_dir)
    return result
