"""Erasure bar of the built-in model: concepts × methods, one table.

    python benchmarks/erasure.py [--concepts circle,red,striped] [--methods vare,s-vare,sace] [--out runs/bench]

For each concept and method: the concept's presence on prompts naming it (training and held-out
templates, 2 seeds each) before → after, prompt-following on other prompts before → after,
erasure wall time and forward-token count.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from varerase.data.concepts import heldout_concept_prompts, world_concept_prompts
from varerase.evaluation.detectors.registry import load_world_detector
from varerase.methods.registry import method_config
from varerase.methods.runner import run_erasure
from varerase.models.registry import load_model
from varerase.tiny.demo import measure_world_erasure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", default="circle,red,striped")
    parser.add_argument("--methods", default="vare,s-vare,sace")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, detector = load_model("tiny"), load_world_detector()
    rows = []
    for concept in args.concepts.split(","):
        train, heldout = world_concept_prompts([concept]), heldout_concept_prompts([concept])
        targets = [p.target for p in train.pairs + heldout.pairs] * 2
        others = list(heldout.retain[:: max(1, len(heldout.retain) // 48)])
        before = measure_world_erasure(model, concept, targets, others, detector)
        for method in args.methods.split(","):
            started = time.perf_counter()
            result = run_erasure(model, method, train.pairs, method_config(method), train.retain, progress=False)
            seconds = time.perf_counter() - started
            after = measure_world_erasure(result.model, concept, targets, others, detector)
            rows.append({
                "concept": concept, "method": method,
                "presence_before": before.presence, "presence_after": after.presence,
                "following_before": before.following, "following_after": after.following,
                "seconds": seconds, "forward_tokens": result.metrics["forward_tokens"],
            })
            print(json.dumps(rows[-1]), flush=True)
    print("\n| concept | method | presence before → after | following before → after | wall s | forward tokens |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concept']} | {r['method']} | {r['presence_before']:.0%} → {r['presence_after']:.0%} | "
              f"{r['following_before']:.0%} → {r['following_after']:.0%} | {r['seconds']:.1f} | {r['forward_tokens']:,} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "erasure_bench.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
