"""Speed and memory of the Infinity port with random weights (no download).

    python benchmarks/infinity_speed.py --preset infinity-2b --pixels 1M --device cuda --dtype bfloat16
    python benchmarks/infinity_speed.py --depth 4 --width 256 --heads 4 --pixels 0.06M   # a CPU-sized check

Prints one table: teacher-forced forward+backward step time (batch --batch), KV-cached generation
time (CFG on, decoding excluded) and peak GPU memory where the device has one. ``--dtype`` stores the
linear weights in that dtype and autocasts (as ``--mixed-precision`` does); ``--activation-checkpointing``
recomputes blocks in backward.
"""

from __future__ import annotations

import argparse
import time

import torch

from varerase.models.base import SamplerConfig, TextCondition
from varerase.models.infinity.checkpoint import PRESETS
from varerase.models.infinity.model import InfinityModel
from varerase.models.infinity.transformer import InfinityConfig, InfinityTransformer
from varerase.models.schedule import infinity_schedule


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS))
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--pixels", default="0.06M")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 / float16 autocast")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute blocks in backward (erase --activation-checkpointing)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.preset:
        config = PRESETS[args.preset](args.pixels)
    else:
        config = InfinityConfig(
            depth=args.depth, width=args.width, num_heads=args.heads, text_channels=2048, bits=32, schedule=infinity_schedule(args.pixels), block_chunks=1,
        )
    with torch.device(device):
        transformer = InfinityTransformer(config)
    model = InfinityModel(transformer, None, None, autocast_dtype=args.dtype).eval()
    model.set_activation_checkpointing(args.activation_checkpointing)
    params = sum(p.numel() for p in transformer.parameters())
    cond = TextCondition(torch.randn(args.batch, 32, config.text_channels, device=device), torch.ones(args.batch, 32, dtype=torch.bool, device=device))
    maps = [torch.randint(0, 2, (args.batch, h, w, config.bits), device=device) for h, w in config.schedule]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    transformer.requires_grad_(True)
    times = []
    for _ in range(args.repeats + 1):
        _sync(device)
        start = time.perf_counter()
        model.teacher_forced_logits(cond, maps).float().logsumexp(-1).mean().backward()
        _sync(device)
        times.append(time.perf_counter() - start)
    transformer.requires_grad_(False)
    step = min(times[1:])
    gen_times = []
    for _ in range(args.repeats + 1):
        _sync(device)
        start = time.perf_counter()
        model.generate(cond, SamplerConfig(cfg=3.0), seed=0, decode=False)
        _sync(device)
        gen_times.append(time.perf_counter() - start)
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "n/a (CPU)"
    print("| model | params | tokens L | batch | device | dtype | checkpointing | teacher-forced fwd+bwd | generation (CFG) | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    name = args.preset or f"depth {config.depth}, width {config.width}"
    checkpointing = "on" if args.activation_checkpointing else "off"
    tokens = sum(h * w for h, w in config.schedule)
    timings = [f"{step:.3f} s", f"{min(gen_times[1:]):.3f} s"]
    cells = [name, f"{params / 1e6:.1f}M", tokens, args.batch, device, args.dtype or "float32", checkpointing, *timings, peak]
    print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
