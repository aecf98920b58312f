"""Speed and memory of the Infinity port with random weights (no download).

    python benchmarks/infinity_speed.py --preset infinity-2b --device cuda      # bfloat16 autocast, as the default there
    python benchmarks/infinity_speed.py --depth 2 --width 64 --heads 2 --pixels 0.06M --generation-batch 2   # a CPU-sized check (< 1 min)

Prints one table:

* **generation**: one pass of as many of ``--generation-batch`` images (default 48, what
  ``varerase benchmark`` asks for) as the device's free memory allows by the estimate of
  :mod:`varerase.models.memory` (all of them off CUDA), CFG on, decoded by a random VAE of the
  model's tokenizer geometry; the estimated peak (weights + images × estimate per image) stands
  next to the measured one;
* **S-VARE step**: one step of the reference preset at batch 2 (two teacher-forced forward and
  backward passes, two AdamW updates of a full cross-attention + FFN edit), with and without
  activation checkpointing (one that runs out of memory says so).

Times are the fastest of ``--repeats`` runs after a warm-up; peak memory is
``torch.cuda.max_memory_allocated`` (n/a on CPU). ``--dtype`` (bfloat16 / float16 / none)
overrides the default precision (bfloat16 for a preset on CUDA, else float32).
"""

from __future__ import annotations

import argparse
import functools
import time
import zlib

import torch
from torch import nn

from varerase.data.pairs import PromptPair
from varerase.methods.registry import method_config, registered_method
from varerase.models.base import SamplerConfig, TextCondition
from varerase.models.infinity.checkpoint import PRESETS
from varerase.models.infinity.model import InfinityModel
from varerase.models.infinity.transformer import InfinityConfig, InfinityTransformer
from varerase.models.infinity.vae import VAE_PRESETS, BitwiseVAE, BitwiseVAEConfig
from varerase.models.registry import resolve_mixed_precision
from varerase.models.schedule import infinity_schedule
from varerase.training.trainer import Trainer

PAIRS = [PromptPair("a photo of a cat on a sofa", "a photo of a dog on a sofa"), PromptPair("a cat in the snow", "a dog in the snow")]


class RandomTextEncoder(nn.Module):
    """Stands in for Flan-T5: ``tokens`` random feature vectors per prompt, fixed by the prompt's hash."""

    def __init__(self, channels: int, tokens: int) -> None:
        super().__init__()
        self.channels, self.tokens = channels, tokens

    def encode(self, prompts: list[str]) -> TextCondition:
        """``[B, tokens, channels]`` features and an all-true mask."""
        features = torch.stack([torch.randn(self.tokens, self.channels, generator=torch.Generator().manual_seed(zlib.crc32(p.encode()))) for p in prompts])
        return TextCondition(features, torch.ones(len(prompts), self.tokens, dtype=torch.bool))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _gib(device: torch.device, value: float | None = None) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    return f"{(torch.cuda.max_memory_allocated() if value is None else value) / 2**30:.1f} GiB"


def build_model(args: argparse.Namespace, device: torch.device) -> InfinityModel:
    """A random Infinity transformer, VAE and text encoder at the preset's (or the flags') size, on ``device``."""
    if args.preset:
        config = PRESETS[args.preset](args.pixels)
        vae_config = VAE_PRESETS["infinity-d56-patchify" if config.patchify else "infinity-d32"]()
    else:
        config = InfinityConfig(
            depth=args.depth, width=args.width, num_heads=args.heads, text_channels=2048, bits=32, schedule=infinity_schedule(args.pixels), block_chunks=1,
        )
        vae_config = BitwiseVAEConfig(bits=32, base_channels=16, channel_mult=(1, 2, 4, 4, 4), num_res_blocks=1, norm_groups=8)  # d32's 16× geometry, narrow
    with torch.device(device):
        transformer, vae = InfinityTransformer(config), BitwiseVAE(vae_config)
    encoder = RandomTextEncoder(config.text_channels, args.text_tokens)
    dtype = resolve_mixed_precision(args.dtype, args.preset or "", device)
    return InfinityModel(transformer, vae, encoder, autocast_dtype=dtype).eval().requires_grad_(False)


def measure_generation(model: InfinityModel, args: argparse.Namespace, device: torch.device) -> list[str]:
    """Time and peak memory of one generation pass of the images that fit (cells of the table)."""
    sampler = SamplerConfig(cfg=3.0, top_k=900, top_p=0.97)
    model.generate_images(["warm-up"], [0], sampler)
    rows = model.generation_batch_size(args.generation_batch, guided=True, text_tokens=args.text_tokens)
    estimate = model.generation_row_bytes(guided=True, text_tokens=args.text_tokens)
    prompts, seeds = [f"prompt {i}" for i in range(rows)], list(range(rows))
    weights = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    _reset_peak(device)
    times = []
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        model.generate_images(prompts, seeds, sampler, batch_size=rows)
        _sync(device)
        times.append(time.perf_counter() - start)
    estimated = _gib(device, weights + rows * estimate) if device.type == "cuda" else f"{rows * estimate / 2**30:.2f} GiB + weights"
    what = f"generation: {rows} of {args.generation_batch} images per pass, CFG, decoded"
    return [what, f"{min(times):.2f} s ({min(times) / rows:.2f} s/image)", _gib(device), estimated]


def measure_svare_steps(model: InfinityModel, args: argparse.Namespace, device: torch.device) -> dict[bool, list[str]]:
    """Time and peak memory of one S-VARE step (reference preset, batch 2), per activation-checkpointing setting."""
    config = method_config("s-vare", "reference", {"steps": args.repeats + 1, "checkpoint_every": 10**6, "batch_size": 2})
    eraser = registered_method("s-vare").eraser(model, PAIRS, config, [], progress=False)
    eraser.prepare()  # the anchors' auxiliary tokens, generated by the frozen model
    cells = {}
    for checkpointing in (True, False):  # with checkpointing first: an out-of-memory run without it leaves a fragmented allocator
        model.set_activation_checkpointing(checkpointing)
        times: list[float] = []

        def timed_step(index, update):
            _sync(device)
            start = time.perf_counter()
            record = eraser.step(index, update)
            _sync(device)
            times.append(time.perf_counter() - start)
            return record

        _reset_peak(device)
        trainer = Trainer(eraser.edit, config.training, progress=False, round_weights=functools.partial(eraser.edit.round_merged_weights, model))
        try:
            trainer.run(timed_step)
            result = [f"{min(times[1:]):.2f} s", _gib(device)]
        except torch.cuda.OutOfMemoryError:
            result = ["out of memory", _gib(device)]
        del trainer
        eraser.edit.zero_grad(set_to_none=True)
        cells[checkpointing] = [f"S-VARE step, batch 2, checkpointing {'on' if checkpointing else 'off'}", *result, ""]
    model.set_activation_checkpointing(False)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS))
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--pixels", default=None, help="pixel budget (default: 1M with --preset, else 0.06M)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 / float16 autocast or none (float32); default: bfloat16 for a preset on CUDA")
    parser.add_argument("--generation-batch", type=int, default=48, help="images asked for; one pass takes those that fit")
    parser.add_argument("--text-tokens", type=int, default=32, help="text tokens per prompt (random features)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up")
    args = parser.parse_args()
    args.pixels = args.pixels or ("1M" if args.preset else "0.06M")
    device = torch.device(args.device)
    model = build_model(args, device)
    rows = [measure_generation(model, args, device)]
    steps = measure_svare_steps(model, args, device)
    rows += [steps[False], steps[True]]
    config = model.config
    name = args.preset or f"depth {config.depth}, width {config.width}"
    params = sum(p.numel() for p in model.transformer.parameters())
    print(f"{name} ({params / 1e6:.0f}M parameters), {args.pixels} ({model.num_tokens} tokens), {device}, {model.autocast_dtype or 'float32'}")
    print("| measurement | time | peak memory | estimated peak |")
    print("|---|---|---|---|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
