"""Stand-in for the two flash-attn functions the official Infinity code imports (see ../README.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def flash_attn_func(*args, **kwargs):
    raise NotImplementedError("stand-in flash_attn: flash_attn_func runs only with the official customised kernel, which the benchmark turns off")


def _padded(packed: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ``[N, …]`` segments → ``[B, max_seqlen, …]`` (rows past a segment's end repeat its last one) and the ``[B, max_seqlen]`` validity mask."""
    starts, lengths = cu_seqlens[:-1].long(), cu_seqlens.diff().long()
    offsets = torch.arange(max_seqlen, device=packed.device)
    valid = offsets[None, :] < lengths[:, None]
    index = starts[:, None] + torch.minimum(offsets[None, :], lengths[:, None] - 1)
    return packed[index], valid


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None, causal=False):
    """``q [Nq, H, c]``, ``kv [Nk, 2, H, c]`` packed by the cumulative lengths → ``[Nq, H, c]`` in ``q``'s dtype.

    Like the real kernel, half-precision inputs are attended in half precision on CUDA; on CPU the
    attention runs in float32 (CPU half-precision matmuls are slow) and is rounded back.
    """
    if dropout_p or causal:
        raise NotImplementedError("stand-in flash_attn: no dropout or causal masking")
    compute = q.dtype if q.is_cuda else torch.float32
    qp, q_valid = _padded(q.to(compute), cu_seqlens_q, max_seqlen_q)  # [B, Lq, H, c]
    kvp, k_valid = _padded(kv.to(compute), cu_seqlens_k, max_seqlen_k)  # [B, Lk, 2, H, c]
    out = F.scaled_dot_product_attention(
        qp.transpose(1, 2), kvp[:, :, 0].transpose(1, 2), kvp[:, :, 1].transpose(1, 2), attn_mask=k_valid[:, None, None, :], scale=softmax_scale
    )
    return out.transpose(1, 2)[q_valid].to(q.dtype)
