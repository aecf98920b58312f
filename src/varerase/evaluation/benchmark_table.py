"""The method benchmark's table and trade-off plot: one row per concept × method.

A row reports, before → after with 95 % Wilson intervals and image counts: the concept's presence
on target prompts (training templates), held-out-template prompts and paraphrase prompts (words
no caption uses, kept where the original model draws the concept), prompt following on retain
prompts (naming no erased concept) and co-occurrence kept (on two-object prompts with one object
named by the erased concept, the images still showing the other object with its shape and colour;
absent for a background or style). Preservation in the detector's feature space is measured on
retain and anchor prompts only, never on targets: KID (unscaled, ± its standard error) of the
after-images against the before-images, and KID/FID of the retain images against the world's
renders of the same captions before and after (FID only with ≥ ``MIN_FID_IMAGES`` images a side).
Then erasure wall time and forward-token count. The pipeline that produces the rows (erase, then
evaluate against the original) is :func:`varerase.api.benchmark`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from varerase.evaluation.metrics import MIN_FID_IMAGES

RATES = {"target_presence": "target", "heldout_presence": "heldout", "paraphrase_presence": "paraphrase"}  # row key → group
PRESERVATION_RATES = ("retain_following", "cooccurrence_kept")  # row keys after RATES in the table


def _pair(metrics: dict, group: str, pick) -> dict | None:
    """``{"before", "after"}`` of ``pick(group summary)``; None when the run has no such group."""
    if group not in metrics["before"]["groups"]:
        return None
    return {side: pick(metrics[side]["groups"][group]) for side in ("before", "after")}


def _following(group: dict) -> dict:
    following = group["prompt_following"]
    return {"rate": following["accuracy"], "count": following["num_correct"], "n": following["num_images"], "ci95": following["ci95"]}


def benchmark_row(concept: str, method: str, metrics: dict, erasure_metrics: dict) -> dict:
    """One row of the table from an evaluation's ``metrics.json`` dict and the erasure run's ``metrics``.

    ``*_presence`` / ``retain_following`` / ``cooccurrence_kept``: ``[before, after]`` rates (None
    for a missing group); ``intervals``: the same as ``{"before", "after"}`` of ``{rate, count, n,
    ci95}``; ``distances``: ``retain_vs_before`` / ``anchor_vs_before`` and ``retain_vs_truth`` /
    ``anchor_vs_truth`` (``{"before", "after"}``) entries of ``metrics.json`` (None where not measured).
    """
    intervals = {key: _pair(metrics, group, lambda g: g["presence_intervals"][concept]) for key, group in RATES.items()}
    intervals["retain_following"] = _pair(metrics, "retain", _following)
    intervals["cooccurrence_kept"] = _pair(metrics, "cooccurrence", lambda g: g["cooccurrence_kept"])
    comparison = metrics["comparison"]
    distances = {f"{group}_vs_before": comparison.get(group, {}).get("distances") for group in ("retain", "anchor")}
    distances |= {f"{group}_vs_truth": _pair(metrics, group, lambda g: g.get("distances_to_truth")) for group in ("retain", "anchor")}
    space = metrics["settings"]["feature_space"]
    row = {"concept": concept, "method": method}
    row |= {key: [pair["before"]["rate"], pair["after"]["rate"]] if pair else None for key, pair in intervals.items()}
    return row | {
        "intervals": intervals,
        "distances": distances,
        "feature_space": space["extractor"] if space else None,
        "diversity": [metrics["before"]["groups"]["target"].get("feature_diversity"), metrics["after"]["groups"]["target"].get("feature_diversity")],
        "wall_seconds": erasure_metrics["wall_seconds"],
        "forward_tokens": erasure_metrics["forward_tokens"],
    }


def _percent(value: float) -> str:
    return f"{100 * value:.0f}"


def _rate_cell(pair: dict | None) -> str:
    """``98 [95–99] → 4 [2–8] % (n 216)``: before and after with their 95 % Wilson intervals."""
    if pair is None or pair["after"]["rate"] is None:
        return "–"
    sides = [f"{_percent(s['rate'])} [{_percent(s['ci95'][0])}–{_percent(s['ci95'][1])}]" for s in (pair["before"], pair["after"])]
    return f"{sides[0]} → {sides[1]} % (n {pair['after']['n']})"


def _kid(d: dict | None) -> str:
    if not d or d.get("kid_mean") is None:
        return "–"
    std = "–" if d["kid_std"] is None else f"{d['kid_std']:.2f}"
    return f"{d['kid_mean']:.2f} ± {std}"


def _fid(d: dict | None) -> str:
    if not d or d.get("fid") is None:
        return "–"
    return f"{d['fid']:.2f}" if d["fid_reliable"] else f"(n < {MIN_FID_IMAGES})"


def _n(d: dict | None) -> str:
    return f" (n {d['num_fake']})" if d and d.get("num_fake") else ""


def _distance_cell(d: dict | None) -> str:
    """``FID 3.10 · KID 0.52 ± 0.40 (n 1080)`` for one distances entry."""
    return "–" if d is None else f"FID {_fid(d)} · KID {_kid(d)}{_n(d)}"


def _before_after_cell(pair: dict | None) -> str:
    """``FID a → b · KID a ± s → b ± s (n …)`` for the before and after entries of one group."""
    if pair is None or pair["after"] is None:
        return "–"
    before, after = pair["before"], pair["after"]
    return f"FID {_fid(before)} → {_fid(after)} · KID {_kid(before)} → {_kid(after)}{_n(after)}"


def columns(feature_space: str | None) -> tuple[str, ...]:
    """The table's header: distance columns name ``feature_space`` and KID's scale (unscaled)."""
    space = f"{feature_space or 'detector'} features, KID unscaled"
    return (
        "concept", "method", "target presence", "held-out presence", "paraphrase presence", "retain following", "co-occurrence kept",
        f"retain vs before ({space})", f"anchor vs before ({space})", f"retain vs truth, before → after ({space})",
        "wall s", "forward tokens",
    )


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a markdown table: rates before → after with 95 % Wilson intervals and n; FID
    and KID (unscaled, ± its standard error) with n images a side, FID only where both sides
    have ≥ ``MIN_FID_IMAGES`` images. A legend line follows the table."""
    header = columns(rows[0]["feature_space"] if rows else None)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        i, d = r["intervals"], r["distances"]
        cells = [
            r["concept"], r["method"], *(_rate_cell(i[key]) for key in (*RATES, *PRESERVATION_RATES)),
            _distance_cell(d["retain_vs_before"]), _distance_cell(d["anchor_vs_before"]), _before_after_cell(d["retain_vs_truth"]),
            f"{r['wall_seconds']:.1f}", f"{r['forward_tokens']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    legend = (
        "Rates in %, before → after, each with its 95 % Wilson interval; n = images per group. Co-occurrence kept: of the "
        "images of two-object prompts with one object named by the erased concept, those still showing the other object "
        "(shape and colour; – for a background or style). KID unscaled, ± its standard error (random halves of the prompts); "
        f"n = generated images (as many reference ones); FID only with ≥ {MIN_FID_IMAGES} images a side. Truth = the world's "
        "renders of the same captions. Target prompts never enter a distance."
    )
    return "\n".join(lines) + "\n\n" + legend + "\n"


def plot_tradeoff(rows: Sequence[dict], path: Path) -> None:
    """Erasure (target presence drop) against preservation (retain following after), one point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        axis.scatter([r["target_presence"][0] - r["target_presence"][1] for r in mine], [r["retain_following"][1] for r in mine], label=method, s=40)
        for r in mine:
            axis.annotate(r["concept"], (r["target_presence"][0] - r["target_presence"][1], r["retain_following"][1]), fontsize=7)
    axis.set_xlabel("erasure: target presence before − after")
    axis.set_ylabel("preservation: prompt-following on retain prompts (after)")
    axis.set_xlim(-0.05, 1.05)
    axis.set_ylim(-0.05, 1.05)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
