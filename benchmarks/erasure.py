"""Erasure bar of the built-in model (issue: VARE/S-VARE/SACE), printed as one table.

    python benchmarks/erasure.py [--concepts circle,red,striped] [--methods vare,s-vare,sace] [--out runs/bench]
                                 [--samples 9] [--max-per-group N]

Same measurements as ``varerase benchmark`` (``varerase.api.benchmark``), at its default sizes
(every prompt × 9 samples: ≥ 216 images per rate) unless ``--samples`` / ``--max-per-group`` make
a small run; the goals it is read against: target presence ≥ 90% → ≤ 5% and retain
prompt-following drop ≤ 2 points, both outside their 95 % intervals, S-VARE ≤ 60 s on 2 cores,
SACE ≤ 10% of S-VARE's forward tokens. The table ends with the run's wall time (``results.md``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import varerase.api as ve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", default="circle,red,striped")
    parser.add_argument("--methods", default="vare,s-vare,sace")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--samples", type=int, default=9, help="images per prompt")
    parser.add_argument("--max-per-group", type=int, default=None, help="prompts per group (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ve.benchmark(
        "tiny", concepts=args.concepts.split(","), methods=args.methods.split(","), out=args.out,
        samples_per_prompt=args.samples, max_per_group=args.max_per_group, progress=False,
    )
    print((Path(args.out) / "results.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
