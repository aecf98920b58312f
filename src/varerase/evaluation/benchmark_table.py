"""The method benchmark's table and trade-off plot: one row per concept × method.

A row reports the concept's presence on target prompts (training templates) and held-out-template
prompts before → after, prompt-following on retain prompts (naming no erased concept) before →
after, FID/KID of the after-images against the before-images in the detector's feature space,
feature diversity on the target prompts, erasure wall time and forward-token count. The pipeline
that produces the rows (erase, then evaluate against the original) is :func:`varerase.api.benchmark`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

COLUMNS = ("concept", "method", "target presence", "held-out presence", "retain following", "FID", "KID", "diversity", "wall s", "forward tokens")


def benchmark_row(concept: str, method: str, metrics: dict, erasure_metrics: dict) -> dict:
    """One row of the table from an evaluation's ``metrics.json`` dict and the erasure run's ``metrics``."""
    before, after = metrics["before"]["groups"], metrics["after"]["groups"]
    distances = metrics["comparison"]["all groups"]["distances"]
    return {
        "concept": concept,
        "method": method,
        "target_presence": [before["target"]["presence"][concept], after["target"]["presence"][concept]],
        "heldout_presence": [before["heldout"]["presence"][concept], after["heldout"]["presence"][concept]],
        "retain_following": [before["retain"]["prompt_following"]["accuracy"], after["retain"]["prompt_following"]["accuracy"]],
        "fid": distances["fid"],
        "kid": distances["kid_mean"],
        "diversity": [before["target"].get("feature_diversity"), after["target"].get("feature_diversity")],
        "wall_seconds": erasure_metrics["wall_seconds"],
        "forward_tokens": erasure_metrics["forward_tokens"],
    }


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a markdown table (before → after where a measure has both)."""
    arrow = lambda pair: f"{pair[0]:.0%} → {pair[1]:.0%}"
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        diversity = f"{r['diversity'][0]:.2f} → {r['diversity'][1]:.2f}" if None not in r["diversity"] else "–"
        lines.append(
            f"| {r['concept']} | {r['method']} | {arrow(r['target_presence'])} | {arrow(r['heldout_presence'])} | "
            f"{arrow(r['retain_following'])} | {r['fid']:.2f} | {r['kid']:.4f} | {diversity} | {r['wall_seconds']:.1f} | {r['forward_tokens']:,} |"
        )
    return "\n".join(lines) + "\n"


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
