"""Quality table of a built-in model (default: the shipped one). Usage: python benchmarks/tiny_quality.py [MODEL_DIR]"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from varerase.evaluation.detectors.registry import load_world_detector
from varerase.models.registry import TINY_WEIGHTS, load_model
from varerase.tiny.quality import measure_quality


def main() -> None:
    torch.set_num_threads(2)
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else TINY_WEIGHTS
    report = measure_quality(load_model(str(directory)), load_world_detector(directory / "detector.safetensors"))
    print("| measure | value | bar | verdict |\n|---|---|---|---|")
    for row in report.rows():
        print("| " + " | ".join(row) + " |")
    print("detector per head:", {k: f"{v:.2%}" for k, v in report.detector_accuracy.items()})


if __name__ == "__main__":
    main()
