"""ISSA — incremental semantic saliency analysis (METHODS.md §5, our specification; SACE-inspired).

For a pair ``(c_u, c_a)``, seeds ``s_1..s_n`` and each switch scale ``k = 0..S``, two curves from
the same seeds (a seed's generations differ only in the condition of each scale):

* **switch-in** ``P_in(k)``: ``c_a`` for scales ``< k``, ``c_u`` from ``k`` (``k = 0`` pure ``c_u``,
  ``k = S`` pure ``c_a``). ``1 − P_in(k)`` is how much of the concept giving scales ``< k`` the
  anchor *prevents*: the most a SACE confined to scales ``0..k−1`` can reach. Saliency
  ``S_k = P_in(k) − P_in(k+1)``; the concept "enters" at ``argmax_k S_k``.
* **commit** ``P_c(k)``: ``c_u`` for scales ``< k``, ``c_a`` from ``k`` (``k = 0`` pure ``c_a``,
  ``k = S`` pure ``c_u``): how much of the concept the first ``k`` scales already lock in.

Both curves share their ends (``P_c(0) = P_in(S)``, ``P_c(S) = P_in(0)``), so those two
generations are made once. The Semantic Singularity Axiom predicts ``P_in(1) ≈ 0`` and
``P_c(1) ≈ P_c(S)``; :class:`IssaCurves` turns the curves into a verdict and SACE's recommended
``scales`` (METHODS.md §4: the smallest ``k`` with ``P_in(k+1) ≤ 0.1``, else the last scale).

Detector-free: per scale ``k``, the mean per-unit ``KL(p(·|c_u, r) ‖ p(·|c_a, r))`` of the
conditional (no CFG) teacher-forced logits, over the positions of scale ``k``, with ``r`` the
``c_u`` generations. Works on any :class:`ScaleWiseModel`, an ``EditedModel`` too.

Every ``(pair, seed)`` row is generated with its own seed and a pair's seeds form one batch, so
under ``torchrun`` the ranks share whole pairs out and gather them back in order: the curves are
a single process's, bit for bit.
"""

from __future__ import annotations

import io
import json
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


# §4's rule: SACE confined to scales 0..k is enough when anchoring them leaves at most this presence.
AUTO_PRESENCE = 0.1
# Below this much prevented at scale 0 (1 − P_in(1)), erase warns that SACE at scales=0 will erase little.
WARN_PREVENTED = 0.5


@dataclass
class IssaPairCurves:
    """One pair's curves. ``kl[k]``, ``k = 0..S−1``; ``switch_in[k]``, ``commit[k]`` and their mean
    detector scores, ``k = 0..S`` (None without a detector); ``detected_in[seed][k]``, ``detected_commit[seed][k]``."""

    target: str
    anchor: str
    kl: list[float]
    switch_in: list[float] | None
    switch_in_score: list[float] | None
    commit: list[float] | None
    commit_score: list[float] | None
    detected_in: list[list[bool]] | None
    detected_commit: list[list[bool]] | None


def saliency(presence: Sequence[float]) -> list[float]:
    """``S_k = P(k) − P(k+1)`` for ``k = 0..S−1`` from ``P(0..S)``; they sum to ``P(0) − P(S)``."""
    return [presence[k] - presence[k + 1] for k in range(len(presence) - 1)]


def _mean_curves(curves: Sequence[Sequence[float]]) -> list[float]:
    return torch.tensor(curves, dtype=torch.float64).mean(0).tolist()


def scales_setting(last_scale: int) -> str:
    """SACE's ``scales`` value for the confined scales ``0..last_scale``: ``"0"`` or ``"0-K"``."""
    return "0" if last_scale == 0 else f"0-{last_scale}"


@dataclass
class IssaCurves:
    """What a decision about SACE needs from an ISSA: the concept, both curves ``[S+1]`` and the model analysed."""

    concept: str
    switch_in: list[float]
    commit: list[float]
    model_fingerprint: str

    @property
    def prevented_at_scale_0(self) -> float:
        """``1 − P_in(1)``: how much of the concept anchoring scale 0 alone prevents."""
        return 1 - self.switch_in[1]

    @property
    def recommended_last_scale(self) -> int:
        """§4's rule: the smallest ``k`` with ``P_in(k+1) ≤ 0.1``, else the last scale ``S − 1``."""
        num_scales = len(self.switch_in) - 1
        return next((k for k in range(num_scales) if self.switch_in[k + 1] <= AUTO_PRESENCE), num_scales - 1)

    def verdict(self) -> str:
        """What a user can act on: what scale 0 prevents and commits, what the recommended confinement can reach, and the axiom."""
        k, num_scales = self.recommended_last_scale, len(self.switch_in) - 1
        span = "scale 0" if k == 0 else f"scales 0–{k}"
        reach = f"a SACE confined to {span} can prevent at most {1 - self.switch_in[k + 1]:.0%}"
        if self.switch_in[k + 1] > AUTO_PRESENCE:
            reach += f" (no confinement reaches ≤ {AUTO_PRESENCE:.0%} presence; the pure anchor itself shows it in {self.switch_in[-1]:.0%})"
        elif k == num_scales - 1 and k > 0:
            reach += " (every scale: the gate then confines nothing)"
        axiom = self.switch_in[1] <= AUTO_PRESENCE and self.commit[1] >= self.commit[-1] - AUTO_PRESENCE
        return (
            f"scale 0 prevents {self.prevented_at_scale_0:.0%} and commits {self.commit[1]:.0%} of {self.concept!r}; {reach}; "
            f"recommended `--set scales={scales_setting(k)}`. Semantic singularity (P_in(1) ≈ 0, P_c(1) ≈ P_c(S) = {self.commit[-1]:.0%}): "
            f"{'holds' if axiom else 'does not hold'} here."
        )

    @classmethod
    def read(cls, folder: str | Path) -> "IssaCurves":
        """The curves in ``folder/issa.json`` (written by ``varerase analyze issa``); a ConfigError says what is missing."""
        path = Path(folder) / "issa.json"
        if not path.exists():
            raise ConfigError(f"no ISSA results at {path}; run `varerase analyze issa --out {folder} …` first")
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            curves = saved["curves"]
            return cls(saved["concept"], list(curves["switch_in"]), list(curves["commit"]), saved["settings"]["model_fingerprint"])
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path} holds no detector ISSA with both curves ({error!r}); run `varerase analyze issa` again") from None


@dataclass
class IssaResult:
    """ISSA over pairs and seeds: per-pair curves, their means, and an image strip per pair.

    ``strips[i]``: ``[n_seeds, 2, S+1, 3, h, w]`` images of pair ``i`` (seed; switch-in then commit;
    column = ``k``), at most :data:`STRIP_SIZE` pixels a side. ``concept`` is None for a detector-free run.
    """

    concept: str | None
    seeds: list[int]
    schedule: list[tuple[int, int]]
    pairs: list[IssaPairCurves]
    settings: dict[str, Any]
    strips: list[torch.Tensor]

    @property
    def switch_in(self) -> list[float] | None:
        """``P_in(k)``, ``k = 0..S``, averaged over pairs and seeds."""
        return None if self.concept is None else _mean_curves([p.switch_in for p in self.pairs])

    @property
    def commit(self) -> list[float] | None:
        """``P_c(k)``, ``k = 0..S``, averaged over pairs and seeds."""
        return None if self.concept is None else _mean_curves([p.commit for p in self.pairs])

    @property
    def saliency(self) -> list[float] | None:
        """``S_k``, ``k = 0..S−1``."""
        return None if self.switch_in is None else saliency(self.switch_in)

    @property
    def kl(self) -> list[float]:
        """Mean per-unit KL per scale, ``k = 0..S−1``, averaged over pairs and seeds."""
        return _mean_curves([p.kl for p in self.pairs])

    @property
    def entry_scale(self) -> int | None:
        """``argmax_k S_k``: the scale at which the concept enters (None without a detector)."""
        values = self.saliency
        return None if values is None else max(range(len(values)), key=values.__getitem__)

    def curves(self) -> IssaCurves | None:
        """Both curves for SACE's decision (None without a detector)."""
        if self.concept is None:
            return None
        return IssaCurves(self.concept, self.switch_in, self.commit, self.settings["model_fingerprint"])

    def table(self) -> list[dict[str, Any]]:
        """One row per switch scale ``k = 0..S`` (the last is pure ``c_a`` for switch-in, pure ``c_u`` for commit; it has no saliency or KL)."""
        switch_in, commit, salient, kl = self.switch_in, self.commit, self.saliency, self.kl
        if switch_in is not None:
            in_score, commit_score = (_mean_curves([getattr(p, name) for p in self.pairs]) for name in ("switch_in_score", "commit_score"))
        num_scales = len(self.schedule)
        rows = []
        for k in range(num_scales + 1):
            size = "x".join(map(str, self.schedule[k])) if k < num_scales else "(pure c_a / pure c_u)"
            row: dict[str, Any] = {"k": k, "size": size, "kl": kl[k] if k < num_scales else None}
            if switch_in is not None:
                row["switch_in"] = switch_in[k]
                row["switch_in_score"] = in_score[k]
                row["commit"] = commit[k]
                row["commit_score"] = commit_score[k]
                row["saliency"] = salient[k] if k < num_scales else None
            rows.append(row)
        return rows

    def summary(self) -> str:
        """Where the concept enters (or where the KL peaks, without a detector), then the verdict."""
        kl = self.kl
        peak = max(range(len(kl)), key=kl.__getitem__)
        kl_part = f"the c_u/c_a KL peaks at scale {peak} ({kl[peak]:.4f})"
        if self.entry_scale is None:
            return f"Detector-free ISSA: {kl_part}."
        k, presence = self.entry_scale, self.switch_in
        return (
            f"Concept {self.concept!r} enters at scale {k} ({'x'.join(map(str, self.schedule[k]))}): "
            f"S_{k} = {self.saliency[k]:.3f} of P_in(0) − P_in(S) = {presence[0]:.3f} − {presence[-1]:.3f}; {kl_part}. {self.curves().verdict()}"
        )

    def to_json(self) -> dict[str, Any]:
        """Everything but the strips, as JSON-ready data."""
        curves = self.curves()
        return {
            "concept": self.concept,
            "summary": self.summary(),
            "verdict": curves.verdict() if curves else None,
            "recommended_scales": scales_setting(curves.recommended_last_scale) if curves else None,
            "entry_scale": self.entry_scale,
            "curves": {"switch_in": self.switch_in, "commit": self.commit, "saliency": self.saliency, "kl": self.kl},
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
    """What one seed of one pair gives: ``strip [2, S+1, 3, h, w]`` (switch-in, commit; column ``k``),
    the detector's ``scores [2, S+1]`` and ``present [2, S+1]`` (None without a detector) and ``kl [S]``."""

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
    on_generation: Callable[[], None] | None = None,
) -> list[SwitchRow]:
    """ISSA's generations (both curves) and teacher-forced passes for one pair, one batch of ``seeds``: a row per seed.

    Every row has its own seed, so a row does not depend on the other seeds of its batch.
    ``on_generation()`` is called after each of the ``2S`` generations.
    """
    n, num_scales = len(seeds), len(model.schedule)
    cond_u, cond_a = model.encode_text([pair.target] * n), model.encode_text([pair.anchor] * n)

    def generated(first: TextCondition, then: TextCondition, k: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, Any]:
        with torch.no_grad():
            generation = model.generate(first, sampler, seed=list(seeds), switch=ConditionSwitch(k, then))
        scores, present = scores_and_presence(detector, generation.images, concept) if detector is not None else (None, None)
        if on_generation is not None:
            on_generation()
        return _downscale(generation.images), scores, present, generation.maps

    switch_in = [generated(cond_a, cond_u, k) for k in range(num_scales + 1)]
    # The ends are shared: commit k = 0 is pure c_a (switch-in k = S), k = S is pure c_u (switch-in k = 0).
    commit = [switch_in[num_scales]] + [generated(cond_u, cond_a, k) for k in range(1, num_scales)] + [switch_in[0]]
    strips = torch.stack([torch.stack([c[0] for c in curve], dim=1) for curve in (switch_in, commit)], dim=1)  # [n, 2, S+1, 3, h, w]
    kl = scale_kl(model, cond_u, cond_a, switch_in[0][3]).cpu()
    if detector is None:
        return [SwitchRow(strips[j], None, None, kl[j]) for j in range(n)]
    scores = torch.stack([torch.stack([c[1] for c in curve], dim=1) for curve in (switch_in, commit)], dim=1)  # [n, 2, S+1]
    present = torch.stack([torch.stack([c[2] for c in curve], dim=1) for curve in (switch_in, commit)], dim=1)
    return [SwitchRow(strips[j], scores[j], present[j], kl[j]) for j in range(n)]


def pair_curves(pair: PromptPair, rows: Sequence[SwitchRow]) -> IssaPairCurves:
    """A pair's curves from its rows (one per seed): means over the seeds."""
    kl = torch.stack([r.kl for r in rows]).mean(0).tolist()
    if rows[0].present is None:
        return IssaPairCurves(pair.target, pair.anchor, kl, None, None, None, None, None, None)
    scores = torch.stack([r.scores for r in rows]).float().mean(0)  # [2, S+1]
    present = torch.stack([r.present for r in rows])  # [n_seeds, 2, S+1]
    presence = present.float().mean(0)
    return IssaPairCurves(
        pair.target, pair.anchor, kl,
        switch_in=presence[0].tolist(), switch_in_score=scores[0].tolist(), commit=presence[1].tolist(), commit_score=scores[1].tolist(),
        detected_in=present[:, 0].tolist(), detected_commit=present[:, 1].tolist(),
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
            task = bar.add_task("ISSA", total=len(indices) * 2 * len(model.schedule))
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
    """PNG plot: ``P_in(k)``, ``P_c(k)`` and ``S_k`` (with a detector) and the per-scale KL, written atomically."""
    try:
        from matplotlib.figure import Figure  # a Figure draws with Agg and touches no global backend
    except ModuleNotFoundError:
        raise ConfigError("plotting ISSA needs matplotlib: pip install 'varerase[eval]'") from None
    panels = 1 if result.switch_in is None else 2
    figure = Figure(figsize=(5 * panels, 3.6), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    if result.switch_in is not None:
        ks = range(len(result.switch_in))
        axes[0].plot(ks, result.switch_in, marker="o", label="switch-in P_in(k): c_a before k")
        axes[0].plot(ks, result.commit, marker="^", label="commit P_c(k): c_u before k")
        axes[0].bar(range(len(result.saliency)), result.saliency, alpha=0.4, color="tab:orange", label="saliency S_k")
        axes[0].set(xlabel="switch scale k", ylabel="concept presence", title=f"ISSA: {result.concept}", xticks=list(ks))
        axes[0].legend(fontsize="small")
    axes[-1].plot(range(len(result.kl)), result.kl, marker="s", color="tab:green")
    axes[-1].set(xlabel="scale k", ylabel="mean per-unit KL", title="KL(p(.|c_u, r) || p(.|c_a, r))", xticks=list(range(len(result.kl))))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(buffer.getvalue(), path)


def save_issa(result: IssaResult, out_dir: str | Path) -> Path:
    """Write ``issa.json``, ``issa.png`` and ``strips/pair_XX.png`` into ``out_dir``; returns the JSON path.

    A strip has two rows per seed (switch-in, then commit) and a column per switch scale ``k``.
    """
    out_dir = Path(out_dir)
    for i, strip in enumerate(result.strips):
        labels = [f"seed {s} {curve}" for s in result.seeds for curve in ("in", "commit")]
        scale = max(1, 64 // strip.shape[-2])  # enlarge small tiles (32 px world images) so a strip is readable
        save_grid(strip.flatten(0, 2), out_dir / "strips" / f"pair_{i:02d}.png", columns=strip.shape[2], scale=scale, row_labels=labels)
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
