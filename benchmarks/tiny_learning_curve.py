"""Two-object quality against the transformer's training length and width, on the shipped tokenizer.

Trains built-in transformers from scratch (``train-tiny``'s transformer phase, seed 0, on the
shipped tokenizer's maps of the same 30,000 world images) for each STEPSxWIDTH run, and prints
"both objects right" on the quality table's 72 held-out two-object prompts (the same 144 images'
seeds as ``benchmarks/tiny_quality.py``), with the final bit CE and the training time, beside the
shipped model (its steps and width are ``tiny_training_config``'s defaults, the shipped run's). It
answers whether a longer or a wider transformer is what the two-object bar needs.

Usage: python benchmarks/tiny_learning_curve.py [--device cuda] [--runs 1000x128,1000x192]
"""

from __future__ import annotations

import argparse
import time

import torch

from varerase.data.world import parse_objects
from varerase.data.world_rendering import WorldConfig, make_dataset
from varerase.evaluation.detectors.registry import load_world_detector
from varerase.evaluation.metrics import attribute_hits, wilson_interval
from varerase.models.infinity.model import InfinityModel
from varerase.models.registry import load_model
from varerase.tiny.quality import heldout_prompts
from varerase.tiny.train import TINY_DEFAULT_SAMPLER, encode_dataset, new_tiny_model, tiny_training_config, train_transformer

SAMPLES_PER_PROMPT = 2
QUALITY_SEED = 1000  # measure_quality's first seed


def both_objects_right(model: InfinityModel, detector) -> tuple[int, int]:
    """(hits, images) of "both objects right" on the held-out two-object prompts, 2 seeds each."""
    prompts = heldout_prompts()
    first_pair = next(i for i, p in enumerate(prompts) if len(parse_objects(p)) > 1)
    texts = [p for p in prompts[first_pair:] for _ in range(SAMPLES_PER_PROMPT)]
    seeds = [QUALITY_SEED + first_pair * SAMPLES_PER_PROMPT + i for i in range(len(texts))]
    images = model.generate_images(texts, seeds, TINY_DEFAULT_SAMPLER, 64).cpu()
    hits = [row["objects"] for row in attribute_hits(detector, images, texts) if "objects" in row]
    return sum(hits), len(hits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default="1000x128,1000x192", help="comma-separated STEPSxWIDTH")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    detector = load_world_detector()
    shipped = load_model("tiny", device=args.device)
    config = tiny_training_config()
    shipped_size = (config.transformer_steps, config.transformer.width, sum(p.numel() for p in shipped.transformer.parameters()))
    rows = [("shipped", *shipped_size, "–", "–", both_objects_right(shipped, detector))]
    world = make_dataset(config.train_images, seed=config.seed, split="train", config=WorldConfig(seed=config.seed))
    maps = encode_dataset(shipped.vae, world.images)
    for run in args.runs.split(","):
        steps, width = (int(x) for x in run.split("x"))
        config = tiny_training_config({"transformer_steps": steps, "transformer.width": width})
        model = new_tiny_model(config, shipped.vae, args.device)
        started = time.perf_counter()
        metrics = train_transformer(model, maps, world.captions, config, progress=False)
        seconds = time.perf_counter() - started
        parameters = sum(p.numel() for p in model.transformer.parameters())
        rows.append((run, steps, width, parameters, f"{metrics['final_bit_ce']:.3f}", f"{seconds:.0f}", both_objects_right(model, detector)))
    print(f"device {args.device}, {torch.get_num_threads()} threads")
    print("| run | steps | width | parameters | final bit CE | train s | both objects right |\n|---|---|---|---|---|---|---|")
    for run, steps, width, parameters, bit_ce, seconds, (hits, n) in rows:
        low, high = wilson_interval(hits, n)
        print(f"| {run} | {steps} | {width} | {parameters:,} | {bit_ce} | {seconds} | {hits}/{n} = {hits / n:.1%} [{low:.1%}–{high:.1%}] |")


if __name__ == "__main__":
    main()
