"""How much device memory a KV-cached generation takes per image, and how many images fit in one pass.

A scale-wise model generating an image keeps, in each CFG branch (conditional and unconditional),
the keys and values of every block for every position generated so far. For Infinity-2B at 1M
pixels that is 32 blocks × 2 × 10,521 positions × 2048 channels: 5.5 GB per branch in float32.
:func:`generation_row_bytes` adds up that cache and the transients of the largest step;
:func:`generation_batch_size` turns it into the number of images one pass can hold on a CUDA
device (off CUDA it keeps the caller's batch, as before). The VAE decodes in calls of at most
:data:`DECODE_PIXELS` pixels (:func:`decode_batch_size`), after the caches are freed.
"""

from __future__ import annotations

from typing import Sequence

import torch

from varerase.models.schedule import scale_offsets

# Share of a CUDA device's total memory left out of what a generation may take: the caching
# allocator's fragmentation, cuBLAS / attention workspaces, and the estimate's own error.
SAFETY_FRACTION = 0.10
# Pixels the VAE decodes per call: one 1024² image, whose float32 decoder activations (a few
# full-resolution maps of 128 channels, 512 MiB each) stay far below one generated row's KV cache.
DECODE_PIXELS = 2**20


def generation_row_bytes(
    schedule: Sequence[tuple[int, int]],
    width: int,
    depth: int,
    bits: int,
    dtype: torch.dtype = torch.float32,
    *,
    key_dtype: torch.dtype | None = None,
    ffn_hidden: int | None = None,
    guided: bool = True,
    text_tokens: int = 0,
    text_channels: int = 0,
) -> int:
    """Peak bytes one generated image adds to a KV-cached generation pass (an upper bound up to a few %).

    ``dtype``: what the blocks compute in (the autocast dtype, or float32); ``key_dtype``: the
    cached keys' dtype (default ``dtype``); ``ffn_hidden``: the FFN width (default ``4·width``);
    ``text_tokens`` × ``text_channels``: the padded text features of a row. With ``g = 2``
    branches when ``guided`` (else 1), ``c`` the bytes of ``dtype``, ``C`` the width, ``H`` the
    FFN width, ``n_k`` the positions of scale ``k`` and ``L_k`` those up to and including it, the
    peak is the largest over scales ``k`` (in practice the last) of, per image:

    * KV cache ``g·(depth·L_k + L_{k−1})·C·(b_key + b_value)``: every block's keys and values, plus
      the current block's previous cache while its concatenation with the new positions is written;
    * attention casts ``g·L_k·C·(4 + 2c)`` (half precision only): float32 and ``dtype`` copies of
      one block's keys/values that autocast makes for the attention kernel;
    * block ``g·n_k·(16·C + 2c·C + 2c·H)``: four float32 residual-stream vectors, the scale input
      and the attention output in ``dtype``, and the FFN's hidden layer before and after GELU;
    * the next input ``n_k·C·c`` (before it is doubled for CFG) and the text ``g·T·(4·C_text + c·C)``;
    * outputs ``L·bits·16 + g·n_max·bits·8 + n_S·bits·4``: every scale's logits (float32 pairs)
      and sampled maps (int64), a step's raw logits, and the running sum of codes.

    ``tests/test_generation_memory.py`` checks this against the tensors a CPU generation
    allocates (within a few % in float32 and bfloat16).
    """
    c = torch.finfo(dtype).bits // 8
    key = torch.finfo(key_dtype or dtype).bits // 8
    hidden = ffn_hidden or 4 * width
    branches = 2 if guided else 1
    offsets = scale_offsets(schedule)
    sizes = [h * w for h, w in schedule]
    half = c < 4
    peak = 0
    for k, n in enumerate(sizes):
        kv = branches * (depth * offsets[k + 1] + offsets[k]) * width * (key + c)
        casts = branches * offsets[k + 1] * width * (4 + 2 * c) if half else 0
        block = branches * n * (16 * width + 2 * c * width + 2 * c * hidden)
        peak = max(peak, kv + casts + block + n * width * c)
    text = branches * text_tokens * (4 * text_channels + c * width)
    outputs = offsets[-1] * bits * 16 + branches * max(sizes) * bits * 8 + sizes[-1] * bits * 4
    return peak + text + outputs


def fitting_batch_size(requested: int, row_bytes: int, free_bytes: int) -> int:
    """How many rows of ``row_bytes`` fit in ``free_bytes``: at least 1 (a pass that cannot fit still tries one), at most ``requested``."""
    if requested < 1 or row_bytes < 1:
        raise ValueError(f"requested ({requested}) and row_bytes ({row_bytes}) must be ≥ 1")
    return max(1, min(requested, free_bytes // row_bytes))


def device_free_bytes(device: torch.device | str) -> int | None:
    """Bytes a generation may still allocate on ``device``; None off CUDA (no limit is read there).

    CUDA's free memory (``torch.cuda.mem_get_info``) plus what PyTorch's caching allocator holds
    but does not use, less :data:`SAFETY_FRACTION` of the device's total.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(0, int(free + cached - SAFETY_FRACTION * total))


def generation_batch_size(requested: int, row_bytes: int, device: torch.device | str) -> int:
    """Rows one generation pass takes: ``requested`` off CUDA, else as many as fit (:func:`fitting_batch_size`), at most ``requested``."""
    free = device_free_bytes(device)
    return requested if free is None else fitting_batch_size(requested, row_bytes, free)


def decode_batch_size(pixels_per_image: int) -> int:
    """Images the VAE decodes per call: as many as make :data:`DECODE_PIXELS` pixels, at least 1.

    Fixed by the image size alone, never by the device's free memory, so how images are grouped
    for decoding (which can move the last bits of a pixel) does not depend on the machine.
    """
    return max(1, DECODE_PIXELS // pixels_per_image)


# Activations one teacher-forced forward keeps for backward, per block, position and row, in
# vectors of the width C: measured on CPU with the port's own blocks (tests/test_generation_memory.py)
# — the float32 residual stream and norms, and the compute-dtype projections, attention output
# and gains; the FFN keeps 2 vectors of its hidden width (before and after GELU).
SAVED_FLOAT32_VECTORS = 7.0
SAVED_COMPUTE_VECTORS = 15.5
# With activation checkpointing a block keeps its float32 input only (plus a small remainder).
CHECKPOINTED_FLOAT32_VECTORS = 1.9


def teacher_forcing_bytes(
    schedule: Sequence[tuple[int, int]],
    width: int,
    depth: int,
    rows: int,
    dtype: torch.dtype = torch.float32,
    *,
    ffn_hidden: int | None = None,
    checkpointing: bool = False,
    dense_mask: bool = True,
) -> int:
    """Activation bytes of one teacher-forced forward + backward over ``rows`` rows (the erasure step's model part).

    With ``L`` positions (every scale of ``schedule``), ``C`` the width, ``H`` the FFN width and
    ``c`` the bytes of ``dtype`` (the autocast dtype, or float32), each block keeps for backward,
    per row and position, :data:`SAVED_FLOAT32_VECTORS` float32 and :data:`SAVED_COMPUTE_VECTORS`
    compute-dtype vectors of ``C`` plus ``2·H·c``, and per batch the block-causal mask as SDPA's
    additive bias, ``L²·c`` (the dense mask is converted in every block and kept for its backward;
    ``dense_mask=False`` for the FlexAttention backend, whose block mask is a few kilobytes).
    With ``checkpointing`` a block keeps only its input (:data:`CHECKPOINTED_FLOAT32_VECTORS`) and
    backward recomputes one block at a time, so the peak adds about half of one block's
    activations (measured: backward frees them as it goes back through the block).
    Not included: weights, the edit's trainable state and gradients, the loss and the text encoder.
    ``tests/test_generation_memory.py`` checks this against the tensors a CPU step allocates.
    """
    c = torch.finfo(dtype).bits // 8
    hidden = ffn_hidden or 4 * width
    positions = sum(h * w for h, w in schedule)
    per_position = (4 * SAVED_FLOAT32_VECTORS + c * SAVED_COMPUTE_VECTORS) * width + 2 * c * hidden
    block = rows * positions * per_position + (positions**2 * c if dense_mask else 0)
    if not checkpointing:
        return int(depth * block)
    return int(depth * rows * positions * width * 4 * CHECKPOINTED_FLOAT32_VECTORS + block / 2)
