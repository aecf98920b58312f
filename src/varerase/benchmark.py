"""``varerase benchmark``: every method on the same concepts, one table.

For each concept × method: erase (its own run directory), then evaluate the edited model against
the original on the world's prompt groups with the same seeds. A row reports the concept's
presence on target prompts (training templates) and held-out-template prompts before → after,
prompt-following on retain prompts (naming no erased concept) before → after, FID/KID of the
after-images against the before-images in the detector's feature space, feature diversity on
the target prompts, erasure wall time and forward-token count.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from rich.console import Console

from varerase.data.concepts import world_concept_prompts
from varerase.evaluation.detectors.registry import load_world_detector
from varerase.evaluation.evaluate import evaluate
from varerase.evaluation.prompts import world_prompt_groups
from varerase.io import atomic_write_json, atomic_write_text
from varerase.methods.registry import ERASERS, has_preset, method_config
from varerase.methods.runner import run_erasure
from varerase.models.base import ScaleWiseModel
from varerase.runtime.distributed import DistributedContext

COLUMNS = ("concept", "method", "target presence", "held-out presence", "retain following", "FID", "KID", "diversity", "wall s", "forward tokens")


def _row(concept: str, method: str, metrics: dict, erasure_metrics: dict) -> dict:
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


def run_benchmark(
    model: ScaleWiseModel,
    concepts: Sequence[str],
    methods: Sequence[str],
    out: str | Path,
    samples_per_prompt: int = 2,
    max_per_group: int = 24,
    progress: bool = True,
    preset: str | None = "tiny",
) -> list[dict]:
    """Run every method on every concept (see module docstring); writes ``results.json``, ``results.md``, ``tradeoff.png``.

    ``preset``: the methods' settings preset where a method has it (default: tuned for the built-in model).
    """
    out = Path(out)
    context = DistributedContext.from_environment()  # under torchrun: erasures use DDP, evaluations share generation
    progress = progress and context.is_main
    console = Console(quiet=not progress)
    methods = list(ERASERS) if list(methods) in (["all"], []) else list(methods)
    for method in methods:
        method_config(method)  # unknown names fail before any work
    settings = {m: method_config(m, preset if preset and has_preset(m, preset) else None) for m in methods}
    detector = load_world_detector()
    rows = []
    for concept in concepts:
        prompts = world_concept_prompts([concept])
        groups = world_prompt_groups([concept], max_per_group)
        for method in methods:
            run_dir = out / concept / method
            started = time.perf_counter()
            result = run_erasure(model, method, prompts.pairs, settings[method], prompts.retain, run_dir=run_dir, resume=run_dir.exists(), progress=progress, context=context)
            console.print(f"{concept} / {method}: erased in {time.perf_counter() - started:.1f} s")
            metrics = evaluate(result.model, groups, detector, model.default_sampler, samples_per_prompt, 48, 0, run_dir / "eval", [concept], reference_model=model, progress=progress, context=context)
            rows.append(_row(concept, method, metrics, result.metrics))
            if context.is_main:
                atomic_write_json(rows, out / "results.json")
    if context.is_main:
        atomic_write_text(markdown_table(rows), out / "results.md")
        plot_tradeoff(rows, out / "tradeoff.png")
    return rows
