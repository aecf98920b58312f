"""Memory per rank of an erasure edit trained with DDP or FSDP2, measured on CPU and estimated for Infinity.

    python benchmarks/distributed_memory.py                      # both tables (2 gloo processes on CPU)
    python benchmarks/distributed_memory.py --estimate-only --gpus 8

Measured: 2 processes (gloo) train a full-delta edit of a random Infinity-shaped transformer
(``--depth``/``--width``) for two AdamW steps with ``erase``'s own code paths (EditedModel,
``shard_edit``, DDP); each rank reports the bytes *it* holds of the edit's trainable state
(deltas, gradients, AdamW moments) and the step time. CPU/gloo times say nothing about GPUs.

Estimated: GPU memory per rank for Infinity-2B/8B erasure settings, from parameter counts
(meta device, no download): frozen weights as ``--mixed-precision bfloat16`` stores them (linear
weights bf16, the rest float32), Flan-T5-XL encoder in float32, the trainable state (16 B per
trainable parameter: fp32 Δ, gradient, two AdamW moments; divided by N under FSDP) and the
overrides ``W + Δ`` alive from forward to backward (bf16); the VAE, the CUDA context and
fragmentation are not included. A second table gives the activations of one teacher-forced
step (``varerase.models.memory.teacher_forcing_bytes``, checked against CPU allocations at small
sizes), which add to the first table's totals. GB = 1e9 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time

import torch
import torch.multiprocessing as mp
from torch import nn

from varerase.models.base import TextCondition
from varerase.models.infinity.checkpoint import PRESETS
from varerase.models.infinity.model import InfinityModel
from varerase.models.infinity.transformer import InfinityConfig, InfinityTransformer
from varerase.models.memory import teacher_forcing_bytes
from varerase.models.units import flatten_maps, per_unit_cross_entropy

T5_XL_ENCODER_PARAMS = 1.22e9  # google/flan-t5-xl encoder
GROUPS = ["cross_attn", "ffn"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _held_bytes(edit: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the edit's deltas, gradients and AdamW state this rank holds (its shards under FSDP)."""
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t
    tensors = [local(p) for p in edit.parameters()] + [local(p.grad) for p in edit.parameters() if p.grad is not None]
    tensors += [local(v) for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.ndim > 0]
    return sum(t.numel() * t.element_size() for t in tensors)


def _measure_worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    from varerase.edits.delta import EditConfig, ParameterEdit
    from varerase.edits.edited_model import EditedModel
    from varerase.runtime.distributed import DistributedContext
    from varerase.training.parallel import ParallelConfig, shard_edit

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    context = DistributedContext.from_environment()
    config = InfinityConfig(
        depth=args.depth, width=args.width, num_heads=args.width // 64, text_channels=64, text_pool_heads=1, bits=8,
        schedule=[(1, 1), (2, 2), (4, 4)], block_chunks=1,
    )
    torch.manual_seed(0)
    model = InfinityModel(InfinityTransformer(config), None, None).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(rank)
    cond = TextCondition(torch.randn(1, 6, 64, generator=generator), torch.ones(1, 6, dtype=torch.bool))
    maps = [torch.randint(0, 2, (1, h, w, config.bits), generator=generator) for h, w in config.schedule]
    results = {}
    for strategy in ("ddp", "fsdp"):
        edit = ParameterEdit(model, EditConfig(GROUPS))
        edited = EditedModel(model, edit)
        caller = edit
        if strategy == "fsdp":
            shard_edit(edit, list(edit.parts.values()), ParallelConfig("fsdp"))
        else:
            caller = context.data_parallel(edit)
        optimizer = torch.optim.AdamW(edit.parameters(), lr=1e-4)
        times = []
        with edited.edit_called_through(caller):
            for _ in range(3):
                start = time.perf_counter()
                logits = edited.teacher_forced_logits(cond, maps)
                per_unit_cross_entropy(logits, flatten_maps(maps)).mean().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=False)
                times.append(time.perf_counter() - start)
        trainable = sum(p.numel() for p in ParameterEdit(model, EditConfig(GROUPS)).parameters())
        results[strategy] = {"bytes": _held_bytes(edit, optimizer), "step_seconds": min(times[1:]), "trainable": trainable}
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(results, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def measured_table(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_measure_worker, args=(_free_port(), args, out), nprocs=2, join=True)
        ranks = [json.load(open(f"{out}/rank{r}.json")) for r in range(2)]
    trainable = ranks[0]["ddp"]["trainable"]
    lines = [
        f"Measured: depth {args.depth}, width {args.width}, {trainable:,} trainable parameters ({', '.join(GROUPS)}), 2 gloo processes on CPU",
        "",
        "| strategy | rank 0 holds (MB) | rank 1 holds (MB) | whole state (MB) | step (s, CPU) |",
        "|---|---|---|---|---|",
    ]
    for strategy in ("ddp", "fsdp"):
        held = [r[strategy]["bytes"] / 1e6 for r in ranks]
        lines.append(f"| {strategy} | {held[0]:.1f} | {held[1]:.1f} | {16 * trainable / 1e6:.1f} | {max(r[strategy]['step_seconds'] for r in ranks):.3f} |")
    return "\n".join(lines)


def _preset_counts(name: str) -> tuple[int, int, int]:
    """(linear-weight parameters, other parameters, trainable parameters of GROUPS) of a preset, on the meta device."""
    with torch.device("meta"):
        model = InfinityModel(InfinityTransformer(PRESETS[name]("1M")), None, None)
    linear = sum(p.numel() for m in model.transformer.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False))
    total = sum(p.numel() for p in model.transformer.parameters())
    groups = model.module_groups()
    trainable = sum(p.numel() for p in {id(p): p for g in GROUPS for m in groups[g] for p in m.parameters()}.values())
    return linear, total - linear, trainable


def estimated_table(gpus: int) -> str:
    lines = [
        f"Estimated GPU memory per rank (GB), {gpus} GPUs, --mixed-precision bfloat16, groups {' + '.join(GROUPS)}; activations excluded",
        "",
        "| model | edit | strategy | frozen weights | T5 encoder | trainable state | overrides W+Δ | total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("infinity-2b", "infinity-8b"):
        linear, other, trainable = _preset_counts(name)
        frozen = (2 * linear + 4 * other) / 1e9
        t5 = 4 * T5_XL_ENCODER_PARAMS / 1e9
        overrides = 2 * trainable / 1e9
        for edit_name, state_params in (("full", trainable), ("LoRA r=16", None)):
            if state_params is None:  # LoRA: r·(in + out) per linear weight of the groups; ~17·r·C per block for Infinity
                config = PRESETS[name]("1M")
                state_params = 17 * 16 * config.width * config.depth
            for strategy, share in (("ddp", 1), ("fsdp", gpus)):
                state = 16 * state_params / share / 1e9
                total = frozen + t5 + state + overrides
                lines.append(f"| {name} | {edit_name} | {strategy} | {frozen:.1f} | {t5:.1f} | {state:.1f} | {overrides:.1f} | **{total:.1f}** |")
    return "\n".join(lines)


def activation_table() -> str:
    """Activations of one teacher-forced forward + backward at 1M pixels, bf16 (:func:`varerase.models.memory.teacher_forcing_bytes`)."""
    lines = [
        "Estimated activations of one teacher-forced step per GPU (GB), 1M pixels (10,521 positions), --mixed-precision bfloat16",
        "",
        "| model | rows per GPU | attention | without checkpointing | --activation-checkpointing |",
        "|---|---|---|---|---|",
    ]
    for name in ("infinity-2b", "infinity-8b"):
        config = PRESETS[name]("1M")
        for rows in (1, 2):
            for attention, dense in (("sdpa", True), ("flex", False)):
                cells = [
                    teacher_forcing_bytes(
                        config.schedule, config.width, config.depth, rows, torch.bfloat16, ffn_hidden=config.ffn_hidden, checkpointing=c, dense_mask=dense
                    ) / 1e9
                    for c in (False, True)
                ]
                lines.append(f"| {name} | {rows} | {attention} | {cells[0]:.1f} | {cells[1]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs assumed by the estimate table")
    parser.add_argument("--estimate-only", action="store_true")
    args = parser.parse_args()
    if not args.estimate_only:
        print(measured_table(args), end="\n\n")
    print(estimated_table(args.gpus), end="\n\n")
    print(activation_table())


if __name__ == "__main__":
    main()
