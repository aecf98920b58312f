"""Our Infinity port against the official code: same random weights, same inputs, one interleaved run.

    # GPU: Infinity-2B size, 1M schedule (L = 10,521), batch 2, bfloat16, random weights
    python benchmarks/vs_official.py --official-repo PATH --peak-tflops 989
    # CPU: a small model (depth 4, width 256, 0.06M schedule), float32, a few minutes
    python benchmarks/vs_official.py --official-repo PATH --quick

PATH is a checkout of FoundationVision/Infinity; nothing of it is part of varerase. Its own
dependencies must be installed (numpy, einops, pytz, tqdm); where ``flash_attn`` or ``timm`` is
missing, our stand-ins (``benchmarks/official_standins``) take its place on the import path.

The official model is built with its own initialisation (seeded), its weights copied into ours
through our official-checkpoint key mapping (strict), and both get the same text features and
token maps. Rows, each timed on both sides in turn, the sides' order alternating between rounds:

* **teacher-forced forward**: logits of every position from text features and token maps, no grad;
* **forward+backward** (one S-VARE pass): that forward, bitwise cross-entropy, backward into the
  weights S-VARE edits (cross-attention and FFN of every block). Ours runs through a full-weight
  edit (``EditedModel``, ``W + Δ``, gradients into ``Δ``), as S-VARE does; the official model runs
  its training forward (``train()`` mode, gradients into the same weights);
* **generation**: KV-cached sampling of ``--batch`` images with CFG 3 (top-k 900, top-p 0.97,
  temperature 0.5), token maps only (no VAE decoding): ours ``generate``, the official
  ``autoregressive_infer_cfg`` (its BSQ quantizer turns sampled bits into the next inputs).

Each side runs as its own code runs on that device. Official training rows as ``scripts/train.sh``:
float32 weights under bfloat16 autocast, FlexAttention compiled (``use_flex_attn``, sequence padded
to a multiple of 128; ``--official-attention sdpa`` for its dense mask), full-block checkpointing
when ``--checkpointing``. Official generation as ``tools/run_infinity.py``: blocks stored in
bfloat16, bfloat16 autocast, fused norms, no FlexAttention. Ours: linear weights stored in
bfloat16 with bfloat16 autocast (the default for the official models on CUDA), teacher-forcing
attention ``--attention``. On CPU everything is float32 and the official code uses its dense-mask
SDPA (its FlexAttention path is CUDA-only).

Times are medians of ``--repeats`` rounds after one warm-up round (compilation, mask building).
Peak memory: ``torch.cuda.max_memory_allocated`` during the row minus what was allocated before it
(activations, gradients, KV caches; all models' weights stay resident); n/a on CPU. MFU: the row's
model FLOPs (:func:`model_flops`) / time / ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from varerase.edits.delta import EditConfig, ParameterEdit
from varerase.edits.edited_model import EditedModel
from varerase.errors import VarEraseError
from varerase.methods.losses import vare_ce_loss
from varerase.models.attention import resolve_backend
from varerase.models.base import SamplerConfig, TextCondition
from varerase.models.infinity.bsq import teacher_forcing_inputs
from varerase.models.infinity.checkpoint import official_state_to_ours
from varerase.models.infinity.model import InfinityModel
from varerase.models.infinity.transformer import InfinityConfig, InfinityTransformer
from varerase.models.loading import load_strict
from varerase.models.schedule import infinity_schedule, scale_offsets, scale_token_counts

STANDINS = Path(__file__).resolve().parent / "official_standins"
CFG, TEMPERATURE, TOP_K, TOP_P = 3.0, 0.5, 900, 0.97  # the official inference defaults for Infinity-2B


@dataclass(frozen=True)
class Size:
    """The model and input size of a run."""

    depth: int
    width: int
    heads: int
    block_chunks: int  # > 1: the official KV-cached inference only walks block chunks
    pixels: str
    text_channels: int = 2048
    text_max_length: int = 512


SIZES = {"2b": Size(depth=32, width=2048, heads=16, block_chunks=8, pixels="1M"), "quick": Size(depth=4, width=256, heads=4, block_chunks=2, pixels="0.06M")}


def model_flops(config: InfinityConfig, batch: int, text_tokens: int) -> tuple[float, float]:
    """Model FLOPs (2 per multiply-add) of a teacher-forced forward and of one S-VARE forward+backward.

    Useful work only: attention over the visible pairs of the block-causal mask, no padding, no
    activation recomputation. Backward: the input gradients every op above the edited weights
    needs (none for the first block's self-attention and for the input to its cross-attention's
    query, nothing below them being trained; none into the text path or the input embedding), and
    the weight gradients of the edited ones (cross-attention q, k/v, output; FFN).
    """
    B, T, C, Ct, F, d = batch, text_tokens, config.width, config.text_channels, config.ffn_hidden, config.bits
    offsets = scale_offsets(config.schedule)
    L = offsets[-1]
    pairs = sum(n * offsets[k + 1] for k, n in enumerate(scale_token_counts(config.schedule)))  # query–key pairs the mask lets through
    sa_linear = 2 * B * L * 4 * C * C  # qkv and output projections
    sa_attention = 2 * 2 * B * pairs * C  # scores and weighted values
    ca_q_out = 2 * B * L * 2 * C * C
    ca_kv = 2 * B * T * 2 * C * C
    ca_attention = 2 * 2 * B * L * T * C
    ffn = 2 * B * L * 2 * C * F
    text = 2 * B * T * (Ct * C + C * C) + 2 * B * T * Ct * 2 * C  # text_proj_for_ca; the start token's attentive pool
    head = 2 * B * L * C * 2 * d
    forward = config.depth * (sa_linear + sa_attention + ca_q_out + ca_kv + ca_attention + ffn) + text + 2 * B * L * d * C + head
    backward_block = sa_linear + 2 * sa_attention + 2 * ca_q_out + ca_kv + 2 * ca_attention + 2 * ffn
    backward = config.depth * backward_block - (sa_linear + 2 * sa_attention + ca_q_out // 2) + head
    return forward, forward + backward


def import_official(repo: Path) -> types.SimpleNamespace:
    """The official classes from the checkout at ``repo`` (stand-ins behind the installed packages on the path)."""
    if not (repo / "infinity" / "models" / "infinity.py").is_file():
        raise SystemExit(f"{repo} is not a checkout of FoundationVision/Infinity (no infinity/models/infinity.py)")
    sys.path.insert(0, str(repo.resolve()))
    sys.path.append(str(STANDINS))  # after site-packages: an installed flash_attn or timm wins
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"infinity\.")  # its deprecated torch.cuda.amp calls, once per block
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from infinity.models.bsq_vae.multiscale_bsq import MultiScaleBSQ
            from infinity.models.infinity import Infinity
    except ModuleNotFoundError as error:
        raise SystemExit(f"the official code needs the package {error.name!r}: pip install {error.name}") from error
    return types.SimpleNamespace(Infinity=Infinity, MultiScaleBSQ=MultiScaleBSQ)


def build_official(official: types.SimpleNamespace, size: Size, schedule: list[tuple[int, int]], args: argparse.Namespace, device: torch.device):
    """The official model set up for training (train.sh) and for inference (run_infinity.py), with the same weights, on ``device``."""
    bits = 32
    # What the official model reads from its VAE: token width, vocabulary, the BSQ quantizer (bits → codes).
    quantizer = official.MultiScaleBSQ(dim=bits, codebook_size=2**bits, schedule_mode="dynamic").to(device)
    tokenizer = types.SimpleNamespace(embed_dim=bits, vocab_size=2**bits, quantizer=quantizer)
    common = dict(
        vae_local=tokenizer, text_channels=size.text_channels, text_maxlen=size.text_max_length, embed_dim=size.width, depth=size.depth,
        num_heads=size.heads, mlp_ratio=4.0, drop_path_rate=0.0, cond_drop_rate=0.0, shared_aln=True, block_chunks=size.block_chunks,
        raw_scale_schedule=[(1, h, w) for h, w in schedule], customized_flash_attn=False, pad_to_multiplier=128,
        add_lvl_embeding_only_first_block=1, use_bit_label=1, rope2d_each_sa_layer=1, rope2d_normalized_by_hw=2, pn=size.pixels,
        apply_spatial_patchify=0, train_h_div_w_list=[1.0],
    )
    torch.manual_seed(args.seed)
    with contextlib.redirect_stdout(io.StringIO()):  # the official constructor prints its settings
        training = official.Infinity(
            **common, checkpointing="full-block" if args.checkpointing else None, fused_norm=False, use_flex_attn=args.official_attention == "flex",
            batch_size=args.batch, always_training_scales=100, inference_mode=False,
        )
        inference = official.Infinity(**common, checkpointing="full-block", fused_norm=True, use_flex_attn=False, inference_mode=True)
    inference.load_state_dict(dict(training.state_dict()), strict=True)
    if device.type == "cuda":
        for block in inference.unregistered_blocks:  # run_infinity.py --bf16 1 (its default)
            block.bfloat16()
    training.requires_grad_(False)
    for block in training.unregistered_blocks:  # the weights an S-VARE edit changes
        block.ca.requires_grad_(True)
        block.ffn.requires_grad_(True)
    return training.to(device), inference.eval().requires_grad_(False).to(device), tokenizer


def build_ours(official_training, size: Size, schedule: list[tuple[int, int]], args: argparse.Namespace, device: torch.device) -> InfinityModel:
    config = InfinityConfig(
        depth=size.depth, width=size.width, num_heads=size.heads, text_channels=size.text_channels, text_max_length=size.text_max_length,
        bits=32, schedule=schedule, block_chunks=size.block_chunks, attention=args.attention,
    )
    transformer = InfinityTransformer(config)
    load_strict(transformer, official_state_to_ours(official_training.state_dict(), config), "the official model")
    model = InfinityModel(transformer.to(device), vae=None, text_encoder=None, autocast_dtype="bfloat16" if device.type == "cuda" else None)
    return model.eval().requires_grad_(False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(run: Callable[[], object], device: torch.device) -> tuple[float, int | None]:
    """Seconds of ``run()`` and its peak CUDA memory above what was allocated before it (None off CUDA)."""
    _sync(device)
    before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run()
    _sync(device)
    seconds = time.perf_counter() - start
    return seconds, (torch.cuda.max_memory_allocated() - before if device.type == "cuda" else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", type=Path, required=True, help="a checkout of FoundationVision/Infinity")
    parser.add_argument("--quick", action="store_true", help="small model on CPU (depth 4, width 256, 0.06M schedule) instead of Infinity-2B on CUDA")
    parser.add_argument("--device", default=None, help="default: cpu with --quick, else cuda")
    parser.add_argument("--pixels", default=None, help="schedule's pixel budget (default: 1M, 0.06M with --quick)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens per prompt (random features)")
    parser.add_argument("--attention", default="auto", choices=["auto", "sdpa", "flex"], help="our teacher-forcing attention (auto: flex on CUDA)")
    parser.add_argument("--official-attention", default=None, choices=["sdpa", "flex"], help="the official training attention (default: flex on CUDA)")
    parser.add_argument(
        "--checkpointing", action=argparse.BooleanOptionalAction, default=None, help="activation checkpointing, both sides (default: on; off with --quick)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (dense bf16 on CUDA) for MFU, e.g. 989 for an H100/H200 SXM")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "2b"]
    device = torch.device(args.device or ("cpu" if args.quick else "cuda"))
    args.checkpointing = (not args.quick) if args.checkpointing is None else args.checkpointing
    args.official_attention = args.official_attention or ("flex" if device.type == "cuda" else "sdpa")
    if args.official_attention == "flex" and device.type != "cuda":
        raise SystemExit("the official FlexAttention path is CUDA-only (its masks are built on 'cuda'); use --official-attention sdpa")
    pixels = args.pixels or size.pixels
    size = Size(**{**size.__dict__, "pixels": pixels})
    schedule = infinity_schedule(pixels)

    official = import_official(args.official_repo)
    official_training, official_inference, tokenizer = build_official(official, size, schedule, args, device)
    model = build_ours(official_training, size, schedule, args, device)
    model.set_activation_checkpointing(args.checkpointing)
    edited = EditedModel(model, ParameterEdit(model, EditConfig(groups=("cross_attn", "ffn"))).to(device))

    # The same inputs for both: text features (the official code takes them packed) and token maps.
    B, T, S = args.batch, args.text_tokens, len(schedule)
    g = torch.Generator().manual_seed(args.seed + 1)
    features = torch.randn(B, T, size.text_channels, generator=g)
    maps = [torch.randint(0, 2, (B, h, w, 32), generator=g).to(device) for h, w in schedule]
    cond = TextCondition(features, torch.ones(B, T, dtype=torch.bool)).to(device)
    packed = (features.reshape(B * T, -1).to(device), [T] * B, torch.arange(0, B * T + 1, T, dtype=torch.int32, device=device), T)
    inputs = teacher_forcing_inputs(maps, schedule)  # what the official trainer's BitwiseSelfCorrection makes without bit flips (tests/test_infinity_parity.py)
    targets = torch.cat([m.flatten(1, 2) for m in maps], dim=1)
    official_schedule = [(1, h, w) for h, w in schedule]
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext

    def ours_forward():
        with torch.no_grad():
            return model.teacher_forced_logits(cond, maps)

    def official_forward():
        official_training.eval()
        with torch.no_grad(), autocast():
            return official_training(packed, inputs, official_schedule).float().view(B, -1, 32, 2)

    def ours_step():
        edited.edit.zero_grad(set_to_none=True)
        vare_ce_loss(edited.teacher_forced_logits(cond, maps), targets).backward()

    def official_step():
        official_training.train()
        official_training.zero_grad(set_to_none=True)
        with autocast():
            logits = official_training(packed, inputs, official_schedule)
        vare_ce_loss(logits.float().view(B, -1, 32, 2), targets).backward()

    sampler = SamplerConfig(cfg=CFG, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P)

    def ours_generation():
        model.generate(cond, sampler, seed=list(range(B)), decode=False)

    def official_generation():
        with autocast():
            official_inference.autoregressive_infer_cfg(
                vae=tokenizer, scale_schedule=official_schedule, label_B_or_BLT=packed, B=B, cfg_list=[CFG] * S, tau_list=[TEMPERATURE] * S,
                top_k=TOP_K, top_p=TOP_P, returns_vemb=1, cfg_insertion_layer=[0], vae_type=32, ret_img=False, inference_mode=True,
            )

    gap = (ours_forward() - official_forward()).abs().max().item()  # the same model: only rounding apart
    forward_flops, step_flops = model_flops(model.config, B, T)
    rows = [
        ("teacher-forced forward", ours_forward, official_forward, forward_flops),
        ("forward+backward (S-VARE pass)", ours_step, official_step, step_flops),
        (f"generation, CFG {CFG:g}, {B} image{'s' if B > 1 else ''}", ours_generation, official_generation, None),
    ]
    # (row, side) → the rounds' (seconds, peak bytes), or the error that stopped it (e.g. flex's missing CPU backward)
    results: dict[tuple[str, str], list[tuple[float, int | None]] | VarEraseError] = {}
    for round_index in range(args.repeats + 1):  # round 0 warms up and is not counted
        for name, ours_run, official_run, _ in rows:
            sides = [("ours", ours_run), ("official", official_run)]
            for side, run in sides if round_index % 2 else sides[::-1]:
                if isinstance(results.get((name, side)), VarEraseError):
                    continue
                try:
                    measurement = timed(run, device)
                except VarEraseError as error:
                    results[(name, side)] = error
                    continue
                if round_index:
                    results.setdefault((name, side), []).append(measurement)

    resident = {"ours (model + edit)": (model, edited.edit), "official training": (official_training,), "official inference": (official_inference,)}
    print(header(model, size, device, args, gap, {name: tensor_bytes(*modules) for name, modules in resident.items()}))
    print("| measurement | ours | official | ours / official | peak memory ours | peak memory official | MFU ours | MFU official |")
    print("|---|---|---|---|---|---|---|---|")
    for name, _, _, flops in rows:
        print("| " + " | ".join([name, *table_cells(results[(name, "ours")], results[(name, "official")], flops, args.peak_tflops)]) + " |")
    for (name, side), result in results.items():
        if isinstance(result, VarEraseError):
            print(f"\n{side}, {name}: {result}")


def table_cells(ours: list | VarEraseError, official: list | VarEraseError, flops: float | None, peak_tflops: float | None) -> list[str]:
    """Time, ratio, peak memory and MFU cells of one row; a side that failed reads "fails (below)"."""
    seconds = [None if isinstance(r, VarEraseError) else statistics.median(t for t, _ in r) for r in (ours, official)]
    peaks = [None if isinstance(r, VarEraseError) else max((m for _, m in r if m is not None), default=None) for r in (ours, official)]
    cells = ["fails (below)" if s is None else f"{s:.3f} s" for s in seconds]
    cells.append("—" if None in seconds else f"{seconds[0] / seconds[1]:.2f}×")
    cells += ["n/a" if p is None else f"{p / 2**30:.1f} GiB" for p in peaks]
    for s in seconds:
        achieved = None if s is None or flops is None else flops / s / 1e12
        cells.append("—" if achieved is None else f"{achieved / peak_tflops:.1%} ({achieved:.3g} TFLOP/s)" if peak_tflops else f"{achieved:.3g} TFLOP/s")
    return cells


def tensor_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of ``modules``."""
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


def header(model: InfinityModel, size: Size, device: torch.device, args: argparse.Namespace, gap: float, resident: dict[str, int]) -> str:
    params = sum(p.numel() for p in model.transformer.parameters())
    ours_attention = resolve_backend(args.attention, device)
    git = subprocess.run(["git", "-C", str(args.official_repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    commit = git.stdout.strip() or "unknown commit"
    precision = "bfloat16 autocast" if device.type == "cuda" else "float32"
    return (
        f"depth {size.depth}, width {size.width} ({params / 1e6:.0f}M parameters), {size.pixels} schedule (L = {model.num_tokens}), batch {args.batch}, "
        f"{args.text_tokens} text tokens, {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
        f"{torch.get_num_threads()} threads), "
        f"{precision}, torch {torch.__version__}\n"
        f"attention: ours {ours_attention}, official {args.official_attention} (training) / sdpa (generation); "
        f"activation checkpointing {'on' if args.checkpointing else 'off'}; official code at {commit}; "
        f"median of {args.repeats} interleaved rounds after a warm-up\n"
        f"resident weights (not in the peak columns): {', '.join(f'{name} {nbytes / 2**30:.2f} GiB' for name, nbytes in resident.items())}\n"
        f"same model check: teacher-forced logits differ by at most {gap:.2e} (ours vs official)\n"
    )


if __name__ == "__main__":
    main()
