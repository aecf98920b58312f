"""Infinity's bitwise next-scale transformer, written from the official model's description.

What is ported (module names follow the official checkpoints so weights load one-to-one):

* text path: ``text_norm`` (RMS norm over Flan-T5 features), ``text_proj_for_sos`` (attentive
  pool with one learned query → start token and AdaLN condition), ``text_proj_for_ca``
  (Linear–GELU–Linear → cross-attention keys/values), the learned unconditional text ``cfg_uncond``;
* ``pos_start``, ``lvl_embed`` (added before the first block only), ``word_embed`` (bits → width);
* blocks: AdaLN self-attention with cosine attention (per-head learnable scale, clamped at
  ln 100), q/v biases and 2-D RoPE on every layer (positions normalised to the reference grid);
  cross-attention to the text with a value bias (``ca_norm`` LayerNorm before it); AdaLN FFN
  (GELU-tanh); shared AdaLN (``shared_ada_lin``) plus a learned per-block offset ``ada_gss``;
* head: AdaLN before head, ``Linear(C, 2d)``: ``d`` two-way logits per token (bit ``b`` is
  logits ``[2b, 2b+1]``, class 1 = bit set).

Deliberate differences from the official code (its known traps): RoPE offsets always follow
the scale index (its non-fused path forgets it), condition dropout never runs outside an explicit
training call, the caller's text tensor is never overwritten, any prefix of the schedule can be
computed (scale 0 alone is one position), and loading is strict (see ``checkpoint.py``).
Cross-attention runs through ``scaled_dot_product_attention`` with padded text and a key mask instead
of flash-attn's packed varlen kernels (same result up to dtype; ``InfinityConfig.official_numerics``
reproduces the bfloat16 rounding those kernels impose on a float32 model, see ``CrossAttention``).
Teacher forcing's block-causal self-attention runs through dense-mask SDPA or block-sparse
FlexAttention (``InfinityConfig.attention``, :mod:`varerase.models.attention`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.func import functional_call

from varerase.models.attention import ATTENTION_BACKENDS, Attend, BlockCausalAttention, resolve_backend
from varerase.models.base import TextCondition
from varerase.models.infinity.bsq import teacher_forcing_inputs
from varerase.models.schedule import rope_reference_grid, scale_offsets, token_levels

KVCache = list[tuple[torch.Tensor, torch.Tensor] | None]


@dataclass
class InfinityConfig:
    """Hyperparameters of the transformer (defaults: Infinity-2B at 1024² and 1:1)."""

    depth: int = 32
    width: int = 2048
    num_heads: int = 16
    mlp_ratio: float = 4.0
    text_channels: int = 2048
    text_max_length: int = 512
    # Heads of the attentive text pool; None = the official rule (text_channels // 128, or // 64 when width > 4096).
    text_pool_heads: int | None = None
    bits: int = 32  # bits per transformer token (4× the tokenizer's with spatial patchify)
    patchify: bool = False
    schedule: list[tuple[int, int]] = field(
        default_factory=lambda: [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)]
    )
    block_chunks: int = 8  # only shapes the official checkpoint's key names
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    num_level_embeddings: int = 15
    drop_path_rate: float = 0.0  # active in train() mode only
    ffn_multiple: int = 256  # the FFN width is rounded to a multiple of this (official: 256)
    # Reproduce the official float32 cross-attention rounding (see CrossAttention); off = plain float32.
    official_numerics: bool = False
    # Teacher forcing's self-attention: "sdpa" (dense mask), "flex" (block-sparse FlexAttention) or
    # "auto" (flex on CUDA, sdpa elsewhere); see varerase.models.attention. Generation is unaffected.
    attention: str = "auto"

    def __post_init__(self) -> None:
        self.schedule = [tuple(s) for s in self.schedule]
        # Bounds far above any released model: a corrupt config fails here, not in an allocation.
        for name, high in (("depth", 512), ("width", 32768), ("num_heads", 512), ("text_channels", 32768), ("text_max_length", 8192), ("bits", 4096)):
            if not 1 <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in 1..{high}, got {getattr(self, name)}")
        if not self.schedule or any(len(s) != 2 or not (1 <= s[0] <= 1024 and 1 <= s[1] <= 1024) for s in self.schedule):
            raise ValueError(f"schedule must be a non-empty list of (h, w) sizes in 1..1024, got {self.schedule}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if (self.width // self.num_heads) % 4:
            raise ValueError("head dimension must be divisible by 4 for 2-D RoPE")
        if self.width % self.pool_heads:
            raise ValueError(f"width {self.width} is not divisible by the text pool's {self.pool_heads} heads")
        if self.block_chunks < 1 or self.depth % self.block_chunks:
            raise ValueError(f"depth {self.depth} is not divisible into {self.block_chunks} block chunks")
        if len(self.schedule) > self.num_level_embeddings:
            raise ValueError(f"schedule has {len(self.schedule)} scales but only {self.num_level_embeddings} level embeddings")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention!r}")

    @property
    def pool_heads(self) -> int:
        if self.text_pool_heads is not None:
            return self.text_pool_heads
        return self.text_channels // (64 if self.width > 4096 else 128)

    @property
    def ffn_hidden(self) -> int:
        hidden = round(self.width * self.mlp_ratio / self.ffn_multiple) * self.ffn_multiple
        if hidden <= 0:
            raise ValueError(f"FFN width rounds to 0: lower ffn_multiple ({self.ffn_multiple}) or raise mlp_ratio")
        return hidden


class RMSNorm(nn.Module):
    """RMS norm computed in float32 (Infinity's ``FastRMSNorm``)."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples' residual branches with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


def rope_tables(schedule: Sequence[tuple[int, int]], head_dim: int, theta: float) -> torch.Tensor:
    """2-D RoPE cos/sin for every position of ``schedule``: ``[2, L, head_dim // 2]``.

    Half of the rotary pairs encode the row, half the column; positions of a ``h×w`` map are
    scaled to the reference grid and rounded, as in Infinity's ``rope2d_normalized_by_hw=2``.
    """
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))
    ref_h, ref_w = rope_reference_grid(schedule)
    tables = []
    for h, w in schedule:
        rows = (torch.arange(h) * (ref_h / h)).round().float()
        cols = (torch.arange(w) * (ref_w / w)).round().float()
        freq_h = torch.outer(rows, inv_freq)[:, None, :].expand(h, w, -1)
        freq_w = torch.outer(cols, inv_freq)[None, :, :].expand(h, w, -1)
        angles = torch.cat([freq_h, freq_w], dim=-1).reshape(h * w, half)
        tables.append(torch.stack([angles.cos(), angles.sin()]))
    return torch.cat(tables, dim=1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, N, hd]`` by ``table [2, N, hd/2]`` (pairs of adjacent channels), in float32."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[0], table[1]
    rotated = torch.stack([cos * xf[..., 0] - sin * xf[..., 1], sin * xf[..., 0] + cos * xf[..., 1]], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class SelfAttention(nn.Module):
    """Cosine self-attention with q/v biases, 2-D RoPE and an optional KV cache."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        self.max_scale_mul = math.log(100)
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        attend: Attend | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x [B, N, C]``, ``rope [2, N, hd/2]``; ``attend``: the masked attention of teacher forcing, or None to attend to every key.

        Returns the output ``[B, N, C]`` and the keys/values to cache (past + new).
        """
        B, N, C = x.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        q, k, v = F.linear(x, self.mat_qkv.weight, bias).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
        q = F.normalize(q, dim=-1, eps=1e-12) * scale_mul
        k = F.normalize(k, dim=-1, eps=1e-12)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # The cache keeps k and v as computed (under CUDA autocast: float32 keys, half-precision values).
        out = attend(q, k, v) if attend is not None else F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(B, N, C)), (k, v)


class CrossAttention(nn.Module):
    """Attention from image tokens (or one learned query, for pooling) to text tokens, value bias only.

    ``official_numerics``: the official code runs every cross-attention (the blocks' and the text
    pool's) through flash-attn's varlen kernel, which only takes half precision, so in a float32
    model it casts q, k and v to bfloat16 and the kernel's bfloat16 output back to float32
    (official ``basic.py``, ``CrossAttention.forward``). With the flag on, float32 inputs get the
    same two roundings here (the attention itself runs in float32 on the rounded values); this is
    what lets a float32 run match the official float32 logits to ~1e-5, but for rare rounding-boundary
    flips, instead of ~1e-3 (see ``tests/test_infinity_parity.py``). Off by default: plain float32 is
    the more accurate model.
    Half-precision inputs (autocast) are not rounded again, as in the official code.
    """

    def __init__(self, width: int, kv_channels: int, num_heads: int, learned_query: bool = False, official_numerics: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.learned_query = learned_query
        self.official_numerics = official_numerics
        if learned_query:
            query = torch.empty(1, num_heads, self.head_dim)
            nn.init.trunc_normal_(query, std=math.sqrt(1 / width / 3))
            self.mat_q = nn.Parameter(query)
        else:
            self.mat_q = nn.Linear(width, width)
        self.mat_kv = nn.Linear(kv_channels, 2 * width, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor | None, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """``x [B, N, C]`` (None with a learned query → N = 1), ``text [B, T, C_kv]``, ``text_mask [B, T]`` → ``[B, N, C]``."""
        B, T, _ = text.shape
        kv = F.linear(text, self.mat_kv.weight, torch.cat([self.zero_k_bias, self.v_bias]))
        k, v = kv.view(B, T, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.learned_query:
            q = self.mat_q.to(k.dtype).unsqueeze(2).expand(B, -1, -1, -1)
        else:
            q = self.mat_q(x).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        rounded = self.official_numerics and q.dtype == torch.float32
        if rounded:
            q, k, v = (t.to(torch.bfloat16).float() for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=text_mask[:, None, None, :])
        if rounded:
            out = out.to(torch.bfloat16).float()
        return self.proj(out.transpose(1, 2).reshape(B, -1, self.num_heads * self.head_dim))


class TextAttentivePool(nn.Module):
    """Pools text tokens into one vector with a learned query: the start token and AdaLN condition."""

    def __init__(self, text_channels: int, width: int, num_heads: int, official_numerics: bool = False) -> None:
        super().__init__()
        self.ca = CrossAttention(width, text_channels, num_heads, learned_query=True, official_numerics=official_numerics)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """``[B, T, C_text]`` → ``[B, C]``."""
        return self.ca(None, text, text_mask).squeeze(1)


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def adaptive_layer_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, then ``·(1 + scale) + shift`` (float32)."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps) * (1 + scale) + shift


class CrossAttnBlock(nn.Module):
    """AdaLN self-attention → cross-attention to text → AdaLN FFN."""

    def __init__(self, config: InfinityConfig, drop_path_rate: float) -> None:
        super().__init__()
        width = config.width
        self.eps = config.norm_eps
        self.drop_path_rate = drop_path_rate
        self.sa = SelfAttention(width, config.num_heads)
        self.ca = CrossAttention(width, width, config.num_heads, official_numerics=config.official_numerics)
        self.ffn = FFN(width, config.ffn_hidden)
        self.ca_norm = nn.LayerNorm(width, eps=config.norm_eps)
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, width) / width**0.5)

    def forward(
        self,
        x: torch.Tensor,
        shared_gss: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        rope: torch.Tensor,
        attend: Attend | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x [B, N, C]``, ``shared_gss [B, 1, 6, C]``, ``text [B, T, C]`` → ``[B, N, C]`` and the new KV cache (``attend``: see :class:`SelfAttention`)."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + shared_gss).unbind(2)
        attn, cache = self.sa(adaptive_layer_norm(x, scale1, shift1, self.eps), rope, attend, past)
        x = x + drop_path(attn * gamma1, self.drop_path_rate, self.training)
        x = x + self.ca(self.ca_norm(x), text, text_mask).float()
        x = x + drop_path(self.ffn(adaptive_layer_norm(x, scale2, shift2, self.eps)) * gamma2, self.drop_path_rate, self.training)
        return x, cache


def checkpointed_call(module: nn.Module, *args: Any) -> Any:
    """``module(*args)`` without keeping its activations: backward runs its forward once more.

    The recompute uses the parameter and buffer tensors ``module`` holds *now*, captured here
    and swapped back in with :func:`functional_call`. When the module is itself inside a
    ``functional_call`` (an edit's ``W + Δ``), backward runs after that call has put the base
    weights back; a plain ``checkpoint(module, …)`` would recompute with those and silently
    give wrong gradients.
    """
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return torch.utils.checkpoint.checkpoint(functional_call, module, tensors, args, use_reentrant=False)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(cond.shape[0], 1, 2, -1).unbind(2)
        return adaptive_layer_norm(x, scale, shift, self.eps)


@dataclass
class PreparedCondition:
    """A text condition after the model's text path.

    ``pooled [B, C]`` (start token and head condition), ``shared_gss [B, 1, 6, C]`` (shared
    AdaLN), ``text [B, T, C]`` and ``text_mask [B, T]`` (cross-attention keys/values source).
    """

    pooled: torch.Tensor
    shared_gss: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor


def initial_cfg_uncond(positions: int, text_channels: int) -> torch.Tensor:
    """The official initialisation of the unconditional text ``[positions, text_channels]``: seeded truncated normal / √C_text.

    Seeded, so it is the same on every machine: a checkpoint whose ``cfg_uncond`` is shorter than
    ``text_max_length`` is padded with these rows (:func:`varerase.models.infinity.checkpoint.fitted_cfg_uncond`).
    """
    uncond = torch.empty(positions, text_channels)
    nn.init.trunc_normal_(uncond, std=1.2, generator=torch.Generator().manual_seed(0))
    return uncond / text_channels**0.5


class InfinityTransformer(nn.Module):
    """The transformer of Infinity (see module docstring). Computes logits; sampling lives in ``model.py``."""

    def __init__(self, config: InfinityConfig) -> None:
        super().__init__()
        self.config = config
        C, Ct = config.width, config.text_channels
        init_std = math.sqrt(1 / C / 3)
        self.cfg_uncond = nn.Parameter(initial_cfg_uncond(config.text_max_length, Ct))
        self.text_norm = RMSNorm(Ct, eps=config.norm_eps)
        self.text_proj_for_sos = TextAttentivePool(Ct, C, config.pool_heads, config.official_numerics)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.pos_start = nn.Parameter(torch.empty(1, 1, C))
        nn.init.trunc_normal_(self.pos_start, std=init_std)
        self.lvl_embed = nn.Embedding(config.num_level_embeddings, C)
        nn.init.trunc_normal_(self.lvl_embed.weight, std=init_std)
        self.word_embed = nn.Linear(config.bits, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        rates = [config.drop_path_rate * i / max(1, config.depth - 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(CrossAttnBlock(config, rate) for rate in rates)
        self.head_nm = AdaLNBeforeHead(C, config.norm_eps)
        self.head = nn.Linear(C, 2 * config.bits)
        self.register_buffer("rope", rope_tables(config.schedule, C // config.num_heads, config.rope_theta), persistent=False)
        self.block_causal = BlockCausalAttention(config.schedule)
        self.register_buffer("levels", token_levels(config.schedule), persistent=False)
        self.offsets = scale_offsets(config.schedule)
        # A runtime switch, not part of the config: see InfinityModel.set_activation_checkpointing.
        self.activation_checkpointing = False

    # --- text --------------------------------------------------------------------------------
    def prepare_condition(self, cond: TextCondition) -> PreparedCondition:
        """Run the text path once per condition (see :class:`PreparedCondition`)."""
        text = self.text_norm(cond.features.to(self.cfg_uncond.dtype))
        pooled = self.text_proj_for_sos(text, cond.mask).float()
        shared_gss = self.shared_ada_lin(pooled).view(pooled.shape[0], 1, 6, -1)
        return PreparedCondition(pooled, shared_gss, self.text_proj_for_ca(text), cond.mask)

    def null_features(self, like: TextCondition) -> TextCondition:
        """``cfg_uncond`` in place of every real text token of ``like`` (Infinity's unconditional input)."""
        T = like.features.shape[1]
        if T > self.config.text_max_length:
            raise ValueError(f"condition has {T} tokens, more than text_max_length={self.config.text_max_length}")
        features = self.cfg_uncond[:T].unsqueeze(0).expand(like.batch_size, -1, -1)
        return TextCondition(features, like.mask)

    # --- forward -----------------------------------------------------------------------------
    def run_blocks(
        self,
        x: torch.Tensor,
        prepared: PreparedCondition,
        positions: slice,
        causal: bool,
        caches: KVCache | None = None,
    ) -> torch.Tensor:
        """Push embedded positions ``x [B, N, C]`` (flat sequence slice ``positions``) through all blocks.

        ``causal``: attend under the block-causal mask (teacher forcing, with the backend of
        ``config.attention``), else to every key (one scale of KV-cached sampling, or scale 0
        alone). ``caches`` (one entry per block) is read and updated in place when given. With
        :attr:`activation_checkpointing` on, a pass that records gradients and keeps no caches
        recomputes each block's activations in backward (:func:`checkpointed_call`).
        """
        rope = self.rope[:, positions]
        attend = functools.partial(self.block_causal, backend=resolve_backend(self.config.attention, x.device)) if causal else None
        recompute = self.activation_checkpointing and caches is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            past = caches[i] if caches is not None else None
            args = (x, prepared.shared_gss, prepared.text, prepared.text_mask, rope, attend, past)
            x, new = checkpointed_call(block, *args) if recompute else block(*args)
            if caches is not None:
                caches[i] = new
        return x

    def logits(self, hidden: torch.Tensor, prepared: PreparedCondition) -> torch.Tensor:
        """Hidden states ``[B, N, C]`` → bit logits ``[B, N, d, 2]``."""
        out = self.head(self.head_nm(hidden.float(), prepared.pooled))
        return out.view(*out.shape[:2], self.config.bits, 2)

    def start_embedding(self, prepared: PreparedCondition) -> torch.Tensor:
        """The scale-0 input: pooled text + ``pos_start`` + level-0 embedding, ``[B, 1, C]``."""
        return prepared.pooled.unsqueeze(1) + self.pos_start + self.lvl_embed.weight[0]

    def _inputs_after_start(self, prepared: PreparedCondition, maps: Sequence[torch.Tensor], last_scale: int) -> torch.Tensor:
        """Embedded teacher-forcing inputs of positions ``1…P−1`` (scales ``1..last_scale``, from ``maps``, level embeddings added): ``[B, P−1, C]``."""
        inputs = teacher_forcing_inputs(maps, self.config.schedule, self.config.patchify, last_scale).to(prepared.pooled.dtype)
        return self.word_embed(inputs) + self.lvl_embed(self.levels[1 : self.offsets[last_scale + 1]])

    def teacher_forced_logits(self, prepared: PreparedCondition, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits of every position given ground-truth token maps ``maps[k] [B, h_k, w_k, d]``: ``[B, L, d, 2]``."""
        last = len(self.config.schedule) - 1
        x = torch.cat([self.start_embedding(prepared), self._inputs_after_start(prepared, maps, last)], dim=1)
        hidden = self.run_blocks(x, prepared, slice(0, self.offsets[-1]), causal=True)
        return self.logits(hidden, prepared)

    def prefix_logits(self, prepared: PreparedCondition, maps: Sequence[torch.Tensor], last_scale: int, caches: KVCache | None = None) -> torch.Tensor:
        """Teacher-forced logits of the positions of scales ``0..last_scale`` only (``P`` of them): ``[B, P, d, 2]``.

        ``maps``: the maps of scales ``0..last_scale−1`` at least (none for ``last_scale = 0``, one
        position from the text alone). ``caches`` (one None per block) is filled with those
        positions' keys/values, what a later scale would attend to.
        """
        positions = self.offsets[last_scale + 1]
        x = self.start_embedding(prepared)
        if last_scale > 0:
            x = torch.cat([x, self._inputs_after_start(prepared, maps, last_scale)], dim=1)
        # One position sees itself: no mask, as in sampling.
        hidden = self.run_blocks(x, prepared, slice(0, positions), causal=positions > 1, caches=caches)
        return self.logits(hidden, prepared)

    def logits_after_prefix(self, prepared: PreparedCondition, maps: Sequence[torch.Tensor], context: KVCache, last_scale: int) -> torch.Tensor:
        """Teacher-forced logits of the positions after scale ``last_scale`` ``[B, L−P, d, 2]``, attending at positions ``< P`` to ``context``.

        ``context``: every block's keys/values of the positions of scales ``0..last_scale``, as
        :meth:`prefix_logits` fills them, possibly computed with other weights (SACE's ``context=adapted``).
        """
        positions = self.offsets[last_scale + 1]
        x = self._inputs_after_start(prepared, maps, len(self.config.schedule) - 1)[:, positions - 1 :]
        hidden = self.run_blocks(x, prepared, slice(positions, self.offsets[-1]), causal=True, caches=list(context))
        return self.logits(hidden, prepared)

    def first_scale_logits(self, prepared: PreparedCondition) -> torch.Tensor:
        """Scale-0 logits from the text alone, one position: ``[B, 1, d, 2]``."""
        return self.prefix_logits(prepared, (), 0)

    def step(self, prepared: PreparedCondition, scale: int, codes: torch.Tensor | None, caches: KVCache) -> torch.Tensor:
        """One KV-cached sampling step of scale ``scale``: logits ``[B', h·w, d, 2]`` for the ``B'`` rows of ``prepared``.

        Its input: the start embedding at scale 0, else ``codes [B, h·w, d]`` (the codes sampled so
        far, resized to the scale) embedded and repeated for every guidance branch (``B' = B`` or ``2B``).
        """
        if scale == 0:
            x = self.start_embedding(prepared)
        else:
            x = self.word_embed(codes.to(prepared.pooled.dtype))
            x = x.repeat(prepared.pooled.shape[0] // x.shape[0], 1, 1)
        return self.scale_step(x, prepared, scale, caches)

    def scale_step(self, x: torch.Tensor, prepared: PreparedCondition, scale: int, caches: KVCache) -> torch.Tensor:
        """One KV-cached sampling step: inputs of scale ``scale`` ``[B, h·w, C]`` (level embedding not yet added) → logits ``[B, h·w, d, 2]``."""
        if scale > 0:
            x = x + self.lvl_embed.weight[scale]
        positions = slice(self.offsets[scale], self.offsets[scale + 1])
        hidden = self.run_blocks(x, prepared, positions, causal=False, caches=caches)
        return self.logits(hidden, prepared)
