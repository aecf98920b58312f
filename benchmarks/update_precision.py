"""What pure-bf16 weight updates change at the reference learning rate, on the built-in model.

    python benchmarks/update_precision.py [--steps 100] [--lr 2.34e-5] [--concept circle]

S-VARE erases the concept from the tiny model with its ``tiny`` preset but the reference lr,
once with ``update_precision=float32`` (float32 weights: every update counts) and once with
``bfloat16`` (the reference code's blocks cast to bf16, no float32 master copy: an update below
half a bf16 step is lost). A third row is the bf16 cast alone, without training. Per row: ‖Δ‖
over all edited parameters (against the original float32 W), the norm of what training
changed ‖W + Δ − start‖ (start: W for float32, bf16(W) for bfloat16), the share of edited
weights that differ from W and the share that training moved off its start, S-VARE's last
filtered CE and kept-token share, and, as in ``varerase demo``, the concept's presence on its
target prompts and prompt-following on the other prompts, with counts and 95 % Wilson intervals.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch

from varerase.edits.delta import ParameterEdit
from varerase.edits.edited_model import EditedModel
from varerase.evaluation.detectors.registry import load_world_detector
from varerase.evaluation.metrics import wilson_interval
from varerase.methods.registry import method_config
from varerase.methods.runner import run_erasure
from varerase.models.registry import load_model
from varerase.tiny.demo import demo_prompts, measure_world_erasure


def edit_figures(edit: ParameterEdit, model: torch.nn.Module, start_in_bfloat16: bool) -> dict[str, float]:
    """‖Δ‖, ‖W + Δ − start‖, the share of edited weights ≠ W and the share moved off the start (W, or bf16(W))."""
    params = dict(model.named_parameters())
    norm_sq, trained_sq, changed, moved, total = 0.0, 0.0, 0, 0, 0
    with torch.no_grad():
        for name in edit.names:
            base, delta = params[name].float(), edit.delta(name).float()
            start = base.bfloat16().float() if start_in_bfloat16 else base
            norm_sq += float(delta.double().square().sum())
            trained_sq += float((base + delta - start).double().square().sum())
            changed += int((base + delta != base).sum())
            moved += int((base + delta != start).sum())
            total += base.numel()
    return {"norm": math.sqrt(norm_sq), "trained": math.sqrt(trained_sq), "changed": changed / total, "moved": moved / total, "weights": total}


def rate(value: float, n: int) -> str:
    """``k/n = p % [lo–hi %]`` for a measured rate."""
    k = round(value * n)
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {100 * k / n:.0f} % [{100 * lo:.0f}–{100 * hi:.0f} %]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=2.34e-5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # two threads spin-wait badly on shared cores
    started = time.perf_counter()
    model = load_model("tiny")
    detector = load_world_detector()
    pairs, retain, targets, others = demo_prompts(args.concept)
    rows = [("original", None, {}, measure_world_erasure(model, args.concept, targets, others, detector))]
    cast = ParameterEdit(model, method_config("s-vare", "tiny").edit)
    cast.round_merged_weights(model, torch.bfloat16)
    cast_measures = measure_world_erasure(EditedModel(model, cast), args.concept, targets, others, detector)
    rows.append(("bf16 cast, no training", edit_figures(cast, model, True), {}, cast_measures))
    with tempfile.TemporaryDirectory() as cache:  # both runs train on the same auxiliary tokens
        for precision in ("float32", "bfloat16"):
            config = method_config("s-vare", "tiny", {"lr": args.lr, "steps": args.steps, "update_precision": precision})
            result = run_erasure(model, "s-vare", pairs, config, retain, cache_dir=cache, progress=False)
            figures = edit_figures(result.model.edit, model, precision == "bfloat16")
            measures = measure_world_erasure(result.model, args.concept, targets, others, detector)
            rows.append((f"S-VARE, {precision} updates", figures, result.metrics["final"], measures))
    print(f"S-VARE on the tiny model, concept {args.concept!r}, tiny preset with lr {args.lr:g}, {args.steps} steps; "
          f"{rows[1][1]['weights']:,} edited weights; {time.perf_counter() - started:.0f} s\n")
    print(f"| run | ‖Δ‖ | ‖W+Δ − start‖ | weights ≠ W | moved by training | last FCE / kept | {args.concept} presence on targets | following on others |")
    print("|---|---|---|---|---|---|---|---|")
    for label, figures, final, measures in rows:
        edit = ["–"] * 4
        if figures is not None:
            edit = [f"{figures['norm']:.4f}", f"{figures['trained']:.4f}", f"{100 * figures['changed']:.2f} %", f"{100 * figures['moved']:.2f} %"]
        losses = f"{final['fce']:.4f} / {100 * final['kept']:.1f} %" if final else "–"
        print(f"| {label} | {' | '.join(edit)} | {losses} | {rate(measures.presence, len(targets))} | {rate(measures.following, len(others))} |")


if __name__ == "__main__":
    main()
