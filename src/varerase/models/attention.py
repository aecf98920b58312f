"""Self-attention under the block-causal mask of teacher forcing: dense-mask SDPA or block-sparse FlexAttention.

Teacher forcing attends from every position to every position of its own and coarser scales
(:func:`~varerase.models.schedule.block_causal_mask`). With a dense boolean mask, SDPA computes
every score, masked or not, and cannot use its flash kernels; at Infinity's 1M schedule
(L = 10,521) 38 % of the scores are masked. FlexAttention takes the mask as a ``BlockMask`` of
128×128 tiles, skips the fully masked ones (it computes 63 % of the tiles there, 84 % at 0.06M)
and runs one fused kernel (compiled with ``torch.compile`` on CUDA).

Backends (``InfinityConfig.attention``): ``sdpa`` (dense mask), ``flex`` (block mask), ``auto``
(``flex`` on CUDA where torch has FlexAttention and Triton, which ``torch.compile`` needs to build
its kernel; else ``sdpa``). KV-cached generation attends to every cached key, so it needs no mask
and always runs plain SDPA.

What FlexAttention does off CUDA (torch 2.13, CPU build): its public function refuses inputs that
require grad on CPU ("FlexAttention does not support backward on CPU"), in eager and compiled mode
alike, so a gradient pass with ``flex`` on CPU fails; we re-raise that as a ConfigError that names
the fix. Forward passes run torch's unfused eager reference, which materialises the whole score
matrix: slower than dense SDPA (1.5–1.7×, ``docs/performance.md``), hence ``auto`` = SDPA there.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from varerase.errors import ConfigError
from varerase.models.schedule import block_causal_mask, token_levels

try:
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # torch < 2.5 has no FlexAttention: 'auto' is SDPA, 'flex' a ConfigError
    flex_attention = None

ATTENTION_BACKENDS = ("auto", "sdpa", "flex")

# q [B, H, N, hd], k and v [B, H, S, hd] (each in the dtype its block computed) → [B, H, N, hd]
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_backend(requested: str, device: torch.device) -> str:
    """The backend a pass on ``device`` uses for ``requested`` (one of :data:`ATTENTION_BACKENDS`): ``sdpa`` or ``flex``."""
    if requested not in ATTENTION_BACKENDS:
        raise ConfigError(f"unknown attention backend {requested!r}; known: {', '.join(ATTENTION_BACKENDS)}")
    if requested == "auto":
        return "flex" if flex_attention is not None and device.type == "cuda" and importlib.util.find_spec("triton") is not None else "sdpa"
    if requested == "flex" and flex_attention is None:
        raise ConfigError(f"attention 'flex' needs torch.nn.attention.flex_attention (torch ≥ 2.5, this is {torch.__version__}); use 'sdpa'")
    return requested


@functools.cache
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    # One compiled function per process (as the official code compiles it). torch.compile's default
    # shape handling turns a dimension that changes between calls (batch, queries) dynamic instead of
    # recompiling for every new size until its recompile limit sends the calls to the slow eager path.
    return torch.compile(flex_attention)


class BlockCausalAttention:
    """Attention of the last ``N`` of ``S`` positions (queries ``S − N … S − 1``, keys ``0 … S − 1``) under a schedule's block-causal mask.

    Both teacher-forcing passes have this form: the whole sequence (``N = S = L``) and the
    positions after the start token attending to its cached keys (``N = L − 1``). Masks are built
    on first use and kept: one dense ``[L, L]`` boolean per device (a pass takes a view of it),
    one ``BlockMask`` per device and query/key length.
    """

    def __init__(self, schedule: Sequence[tuple[int, int]]) -> None:
        self.schedule = list(schedule)
        self._dense: dict[torch.device, torch.Tensor] = {}
        self._blocks: dict[tuple[torch.device, int, int], BlockMask] = {}

    def dense_mask(self, queries: int, keys: int, device: torch.device) -> torch.Tensor:
        """``[queries, keys]`` boolean, True where the query may attend to the key."""
        if device not in self._dense:
            self._dense[device] = block_causal_mask(self.schedule, device)
        return self._dense[device][keys - queries : keys, :keys]

    def block_mask(self, queries: int, keys: int, device: torch.device) -> BlockMask:
        """The same mask as a FlexAttention ``BlockMask`` (shared by every batch row and head)."""
        key = (device, queries, keys)
        if key not in self._blocks:
            levels, first = token_levels(self.schedule, device), keys - queries

            def visible(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
                return levels[q_idx + first] >= levels[kv_idx]

            self._blocks[key] = create_block_mask(visible, None, None, queries, keys, device=device)
        return self._blocks[key]

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
        """``q [B, H, N, hd]``, ``k``/``v [B, H, S, hd]`` (any float dtypes) → ``[B, H, N, hd]``, softmax scale 1 (cosine attention); ``backend`` resolved."""
        queries, keys = q.shape[2], k.shape[2]
        if backend == "sdpa":
            # SDPA casts to the autocast dtype by itself; outside autocast it wants k and v in the dtype of q.
            return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=self.dense_mask(queries, keys, q.device), scale=1.0)
        # FlexAttention ignores autocast and wants one dtype: the autocast one when on, else the dtype of q.
        dtype = torch.get_autocast_dtype(q.device.type) if torch.is_autocast_enabled(q.device.type) else q.dtype
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        attend = _compiled_flex_attention() if q.device.type == "cuda" else flex_attention
        try:
            return attend(q, k, v, block_mask=self.block_mask(queries, keys, q.device), scale=1.0)
        except NotImplementedError as error:  # torch 2.13: no FlexAttention backward on CPU (see module docstring)
            raise ConfigError(f"attention 'flex' cannot run this pass on {q.device.type}: {error} Use attention 'sdpa' (or 'auto': SDPA off CUDA).") from error
