"""Quality table of a built-in model (default: the shipped one). Usage: python benchmarks/tiny_quality.py [MODEL_DIR]"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import varerase.api as ve


def main() -> None:
    torch.set_num_threads(2)
    report = ve.quality(str(Path(sys.argv[1])) if len(sys.argv) > 1 else "tiny")
    print("| measure | value | bar | verdict |\n|---|---|---|---|")
    for row in report.rows():
        print("| " + " | ".join(row) + " |")
    print("detector per measure, fresh images:", {k: f"{v:.2%}" for k, v in report.detector_accuracy.items()})
    print("detector per measure, reconstructions:", {k: f"{v:.2%}" for k, v in report.detector_accuracy_reconstructed.items()})


if __name__ == "__main__":
    main()
