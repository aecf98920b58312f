"""Erasure bar of the built-in model (issue: VARE/S-VARE/SACE), printed as one table.

    python benchmarks/erasure.py [--concepts circle,red,striped] [--methods vare,s-vare,sace] [--out runs/bench]

Same measurements as ``varerase benchmark`` (``varerase.api.benchmark``); the goals it is
read against: target presence ≥ 90% → ≤ 5%, retain prompt-following drop ≤ 2 points,
S-VARE ≤ 60 s on 2 cores, SACE ≤ 10% of S-VARE's forward tokens.
"""

from __future__ import annotations

import argparse

import torch

import varerase.api as ve
from varerase.evaluation.benchmark_table import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", default="circle,red,striped")
    parser.add_argument("--methods", default="vare,s-vare,sace")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = ve.benchmark("tiny", concepts=args.concepts.split(","), methods=args.methods.split(","), out=args.out, progress=False)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
