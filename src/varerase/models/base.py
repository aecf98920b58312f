"""The one interface every erasure method, analysis and metric uses to talk to a model.

A scale-wise ("next-scale prediction") text-to-image model generates token maps
``r_0 … r_{S-1}`` of sizes ``schedule[k] = (h_k, w_k)``, coarse to fine; ``L = Σ h_k·w_k``.

Token kinds:

* ``"bitwise"`` (Infinity): a token is ``d = bits`` bits; logits are ``[B, L, d, 2]`` and a map
  of scale ``k`` is a ``{0,1}`` tensor ``[B, h_k, w_k, d]``.
* ``"index"`` (VAR, Switti): a token is one of ``V = vocab_size`` codes; logits ``[B, L, V]``,
  maps ``[B, h_k, w_k]`` of code indices.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch
from torch import nn

from varerase.config import check_int, check_number, short_repr
from varerase.errors import ConfigError
from varerase.models import memory

TokenKind = Literal["bitwise", "index"]
Schedule = list[tuple[int, int]]


@dataclass
class TextCondition:
    """Encoded prompts: padded token features and their mask.

    ``features``: ``[B, T, C_text]`` float; ``mask``: ``[B, T]`` bool, True for real tokens
    (at least one per row). Pooling (Infinity's attentive pool) is the model's job, so no pooled
    vector is carried here.
    """

    features: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.features.shape[:2] != self.mask.shape:
            raise ValueError(f"features {tuple(self.features.shape)} and mask {tuple(self.mask.shape)} disagree")

    @property
    def batch_size(self) -> int:
        return self.features.shape[0]

    def to(self, device: torch.device | str) -> "TextCondition":
        return TextCondition(self.features.to(device), self.mask.to(device))

    def select(self, index: torch.Tensor | slice | list[int]) -> "TextCondition":
        """Rows ``index`` of the batch."""
        return TextCondition(self.features[index], self.mask[index])

    @staticmethod
    def cat(conditions: Sequence["TextCondition"]) -> "TextCondition":
        """Concatenate along the batch, padding token axes to the longest."""
        longest = max(c.features.shape[1] for c in conditions)
        feats, masks = [], []
        for c in conditions:
            pad = longest - c.features.shape[1]
            feats.append(nn.functional.pad(c.features, (0, 0, 0, pad)))
            masks.append(nn.functional.pad(c.mask, (0, pad), value=False))
        return TextCondition(torch.cat(feats), torch.cat(masks))


@dataclass
class SamplerConfig:
    """How a model samples: classifier-free guidance and per-scale sampling settings.

    ``cfg`` and ``temperature`` take one value for every scale or one per scale. CFG acts on
    logits in Infinity's form ``cfg·z(c) + (1−cfg)·z(∅)``; ``cfg = 1`` skips the unconditional
    pass. ``top_k``/``top_p`` apply per unit (per bit for bitwise models); 0 disables each.
    """

    cfg: float | Sequence[float] = 3.0
    temperature: float | Sequence[float] = 1.0
    top_k: int = 0
    top_p: float = 0.0

    MAX_CFG: ClassVar[float] = 1000.0  # beyond it guidance overflows logits to inf (and sampling to nan)
    MIN_TEMPERATURE: ClassVar[float] = 1e-4  # below it logits / temperature overflow

    def __post_init__(self) -> None:
        for name in ("cfg", "temperature"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (int, float, Sequence)) or isinstance(value, Sequence) and not value:
                raise ConfigError(f"{name} must be a number or a list of numbers (one per scale), got {short_repr(value)}")
            values = [check_number(v, name) for v in ([value] if isinstance(value, (int, float)) else value)]
            if any(v < 0 for v in values):
                raise ConfigError(f"{name} must be ≥ 0, got {values}")
            if name == "cfg" and any(v > self.MAX_CFG for v in values):
                raise ConfigError(f"cfg must be ≤ {self.MAX_CFG:g} (typical: 1–10), got {max(values):g}")
            if name == "temperature" and any(v < self.MIN_TEMPERATURE for v in values):
                raise ConfigError(f"temperature must be > 0 (at least {self.MIN_TEMPERATURE:g}), got {min(values):g}")
        check_int(self.top_k, "top_k")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be ≥ 0, got {self.top_k}")
        if not 0.0 <= check_number(self.top_p, "top_p") <= 1.0:
            raise ConfigError(f"top_p must be in [0, 1], got {self.top_p}")

    def _per_scale(self, value: float | Sequence[float], num_scales: int, name: str) -> list[float]:
        if isinstance(value, (int, float)):
            return [float(value)] * num_scales
        values = [float(v) for v in value]
        if len(values) < num_scales:
            raise ConfigError(f"{name} lists {len(values)} values but the schedule has {num_scales} scales")
        return values[:num_scales]

    def cfgs(self, num_scales: int) -> list[float]:
        """Guidance per scale."""
        return self._per_scale(self.cfg, num_scales, "cfg")

    def temperatures(self, num_scales: int) -> list[float]:
        """Temperature per scale."""
        return self._per_scale(self.temperature, num_scales, "temperature")


@dataclass
class Generation:
    """What :meth:`ScaleWiseModel.generate` returns.

    ``maps[k]``: sampled map of scale ``k`` (``[B, h_k, w_k, d]`` bits or ``[B, h_k, w_k]``
    indices). ``logits[k]``: the CFG-combined logits ``z_γ`` the sampler drew from at scale ``k``
    (before temperature and top-k/top-p), ``[B, h_k·w_k, d, 2]`` or ``[B, h_k·w_k, V]``.
    ``images``: ``[B, 3, H, W]`` in ``[0, 1]``, or None when not decoded.
    """

    maps: list[torch.Tensor]
    logits: list[torch.Tensor]
    images: torch.Tensor | None = None

    def all_logits(self) -> torch.Tensor:
        """Logits of every position, ``[B, L, …]``."""
        return torch.cat(self.logits, dim=1)

    @staticmethod
    def cat(parts: Sequence["Generation"]) -> "Generation":
        """Generations of consecutive row blocks joined along the batch (images only where every part has them)."""
        if len(parts) == 1:
            return parts[0]
        maps = [torch.cat(scale) for scale in zip(*(p.maps for p in parts))]
        logits = [torch.cat(scale) for scale in zip(*(p.logits for p in parts))]
        images = torch.cat([p.images for p in parts]) if all(p.images is not None for p in parts) else None
        return Generation(maps, logits, images)


# A switch of condition: from scale ``k`` on, generate with ``condition`` (ISSA uses this).
@dataclass
class ConditionSwitch:
    scale: int
    condition: TextCondition


@dataclass
class ScaleGate:
    """Other weights for the first scales only: SACE's scale-gated adapter (METHODS.md §4).

    The receiving model computes the logits of scales ``0..last_scale`` (the *confined* scales)
    with the adapted weights, each confined scale attending to the confined positions as the
    adapted weights computed them; every later position comes from its own weights. With
    ``adapted_context`` False the keys/values that later scales attend to at the confined
    positions are its own (so it runs the confined positions twice: adapted for the logits,
    original for the cache); True: they are the adapted ones.

    ``run(method, *args)`` calls the receiving model's own method ``method`` with the adapted
    weights swapped in (how they are swapped in is the edit's business, not the model's).
    """

    last_scale: int
    run: Callable[..., Any]
    adapted_context: bool = False


class ScaleWiseModel(nn.Module, abc.ABC):
    """A scale-wise text-to-image model as methods see it.

    Implementations keep their condition dropout off in this interface: teacher forcing and
    sampling are deterministic given their inputs and seed.
    """

    schedule: Schedule
    token_kind: TokenKind
    bits: int = 0
    vocab_size: int = 0
    # The sampling a user gets without flags (models override it with their own defaults).
    default_sampler: "SamplerConfig" = SamplerConfig()
    _text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]]

    # --- text -------------------------------------------------------------------------------
    @abc.abstractmethod
    def _encode_text_uncached(self, prompts: list[str]) -> TextCondition:
        """Encode prompts with the model's text encoder: ``[B, T, C]`` features and mask."""

    def encode_text(self, prompts: Sequence[str], cache: bool = True) -> TextCondition:
        """Encode ``prompts``: a ``TextCondition`` of batch ``len(prompts)`` (``[B, T, C]`` features and ``[B, T]`` mask), on the model's device.

        With ``cache`` (the default) the result is cached per prompt string and each new prompt is
        encoded alone: a prompt's features then never depend on which other prompts (and how much
        padding) shared its batch, so runs replay bit for bit — a resumed run meets its prompts in
        another order than an uninterrupted one. ``cache=False`` encodes all prompts in one batch
        and keeps nothing: for searches that try thousands of candidate prompts once each, which
        would otherwise all stay cached on the device.
        """
        if isinstance(prompts, str):
            raise TypeError("encode_text takes a list of prompts, not a single string")
        if not cache:
            with torch.no_grad():
                return self._encode_text_uncached(list(prompts)).to(self.device)
        if not hasattr(self, "_text_cache"):
            self._text_cache = {}
        for prompt in dict.fromkeys(prompts):
            if prompt not in self._text_cache:
                encoded = self._encode_text_uncached([prompt])
                n = int(encoded.mask[0].sum())
                self._text_cache[prompt] = (encoded.features[0, :n].detach(), encoded.mask[0, :n].detach())
        rows = [self._text_cache[p] for p in prompts]
        return TextCondition.cat([TextCondition(f[None], m[None]) for f, m in rows]).to(self.device)

    @abc.abstractmethod
    def null_condition(self, like: TextCondition) -> TextCondition:
        """The model's own unconditional condition ``∅`` with the batch size and token lengths of ``like``."""

    # --- forward passes -----------------------------------------------------------------------
    @abc.abstractmethod
    def teacher_forced_logits(self, cond: TextCondition, maps: Sequence[torch.Tensor], gate: ScaleGate | None = None) -> torch.Tensor:
        """Logits of all ``L`` positions given ground-truth ``maps`` as context (one pass, block-causal).

        ``maps``: one tensor per scale (see module doc). Returns ``[B, L, d, 2]`` or ``[B, L, V]``.
        ``gate`` gives the confined scales' positions the adapted weights' logits (see :class:`ScaleGate`).
        """

    @abc.abstractmethod
    def first_scale_logits(self, cond: TextCondition) -> torch.Tensor:
        """Scale-0 logits from the text alone (a one-position pass): ``[B, 1, d, 2]`` or ``[B, 1, V]``."""

    def confined_logits(self, cond: TextCondition, maps: Sequence[torch.Tensor], last_scale: int) -> torch.Tensor:
        """Teacher-forced logits of the positions of scales ``0..last_scale`` only: ``[B, P, d, 2]`` or ``[B, P, V]``, ``P = Σ_{j≤k} h_j·w_j``.

        ``maps`` as for :meth:`teacher_forced_logits` (only scales ``< last_scale`` matter; ignored for
        ``last_scale = 0``, which is :meth:`first_scale_logits`). This default slices a full pass;
        a model family that can stop after the prefix overrides it.
        """
        if last_scale == 0:
            return self.first_scale_logits(cond)
        return self.teacher_forced_logits(cond, maps)[:, : self.confined_positions(last_scale)]

    def confined_positions(self, last_scale: int) -> int:
        """``P``: the positions of scales ``0..last_scale``."""
        return sum(h * w for h, w in self.schedule[: last_scale + 1])

    @abc.abstractmethod
    def generate(
        self,
        cond: TextCondition,
        sampler: SamplerConfig,
        seed: int | Sequence[int] | None = None,
        *,
        switch: ConditionSwitch | None = None,
        gate: ScaleGate | None = None,
        decode: bool = True,
        negative: TextCondition | None = None,
    ) -> Generation:
        """KV-cached sampling of all scales (see :class:`Generation`).

        ``seed`` fixes the sampling noise (same seed, same condition → same maps on one machine);
        a list gives each row its own seed, making a row's sample independent of its batch.
        ``switch`` changes the condition from a given scale on; ``gate`` samples the confined
        scales from the adapted weights' logits (of each branch, guidance combining them as
        usual), and everything else from the model itself (see :class:`ScaleGate`).
        ``negative`` (batch 1, for every row, or ``B``): a negative prompt's condition, which the
        unconditional branch of guidance uses instead of :meth:`null_condition`.
        Implementations may sample the rows in sub-batches that fit the device (:meth:`generation_batch_size`).
        """

    @abc.abstractmethod
    def decode(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Tokenizer decoder: maps of every scale → images ``[B, 3, H, W]`` in ``[0, 1]``."""

    @abc.abstractmethod
    def module_groups(self) -> dict[str, list[nn.Module]]:
        """Named groups of submodules methods choose to train or edit.

        At least ``self_attn``, ``cross_attn``, ``ffn``, ``text_proj``, ``start_token``, ``norms``,
        ``head``; plus ``cross_attn_kv`` / ``start_token_kv``: the ``nn.Linear`` maps whose inputs
        are text features and whose outputs are attention keys and values (closed-form edits use them).
        """

    def block_names(self) -> list[str]:
        """Names (as in ``named_modules()``) of the repeated transformer blocks, in order.

        An edit keeps each block's deltas together, the unit FSDP2 shards (docs/distributed.md);
        a model that names none keeps all its deltas in one unit.
        """
        return []

    # --- memory -------------------------------------------------------------------------------
    def generation_row_bytes(self, guided: bool = True, text_tokens: int = 0) -> int | None:
        """Peak device bytes one generated image adds to a generation pass (:func:`varerase.models.memory.generation_row_bytes`).

        ``guided``: CFG on (two branches per image); ``text_tokens``: the padded text length.
        None (this default): the model cannot tell, and every pass takes the rows it is given.
        """
        return None

    def generation_batch_size(self, requested: int, guided: bool = True, text_tokens: int = 0) -> int:
        """Rows of ``requested`` one generation pass takes: all of them off CUDA; on CUDA as many as
        fit in the device's free memory by :meth:`generation_row_bytes` (at least 1)."""
        row_bytes = self.generation_row_bytes(guided, text_tokens)
        return requested if row_bytes is None else memory.generation_batch_size(requested, row_bytes, self.device)

    # --- conveniences -------------------------------------------------------------------------
    @torch.no_grad()
    def generate_images(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        sampler: SamplerConfig | None = None,
        batch_size: int = 64,
        negative_prompt: str | None = None,
    ) -> torch.Tensor:
        """One image per ``(prompt, seed)``, in batches: ``[N, 3, H, W]`` in [0, 1].

        Each row has its own seed, so an image depends on its prompt and seed, not on the batch it
        is drawn in. ``batch_size`` prompts are encoded and handed to :meth:`generate` at once,
        which on CUDA samples them in sub-batches that fit (:meth:`generation_batch_size`).
        ``negative_prompt``: the text of every image's unconditional branch (see :meth:`generate`).
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        sampler = sampler or self.default_sampler
        negative = self.encode_text([negative_prompt]) if negative_prompt is not None else None
        chunks = []
        for start in range(0, len(prompts), batch_size):
            cond = self.encode_text(list(prompts[start : start + batch_size]))
            chunks.append(self.generate(cond, sampler, seed=list(seeds[start : start + batch_size]), negative=negative).images)
        return torch.cat(chunks)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each transformer block's activations in backward instead of storing them.

        Trades memory for time: a training step keeps only the blocks' inputs, and its backward
        runs the forward of every block once more. Only passes that record gradients are
        affected; sampling (under ``no_grad``, KV-cached) and every result stay the same.
        A runtime switch, never saved with the model. Implementations must recompute with the
        tensors the forward used — an edit's ``W + Δ`` swapped in by ``functional_call`` is gone
        by the time backward runs (see ``infinity.transformer.checkpointed_call``).

        This default supports no model: turning it off is a no-op, turning it on raises.
        """
        if enabled:
            raise ConfigError(f"{type(self).__name__} does not support activation checkpointing; train without it")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def num_tokens(self) -> int:
        """``L``: tokens over all scales."""
        return sum(h * w for h, w in self.schedule)

    def units_per_token(self) -> int:
        """``d`` for bitwise models, 1 for index models."""
        return self.bits if self.token_kind == "bitwise" else 1

    def fingerprint(self) -> str:
        """A short hash of the weights and schedule: names a model in caches and result files.

        Kept until a weight changes (another tensor, or an in-place write, which bumps its version):
        an erase, each ``--edit`` load and the benchmark ask for it repeatedly, and hashing reads every weight.
        """
        import hashlib

        state = self.state_dict()
        key = (repr(self.schedule), tuple((name, id(t), t._version) for name, t in state.items()))
        cached = self.__dict__.get("_fingerprint_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        h = hashlib.sha256(repr(self.schedule).encode())
        for name, tensor in sorted(state.items()):
            h.update(name.encode())
            t = tensor.detach()
            # A strided sample plus a checksum of every weight: tells edits apart, cheap for 2B models.
            # The checksum adds the weights' bit patterns as integers, which is exact in any order;
            # a float sum rounds differently with the thread count or device.
            bit_patterns = t.contiguous().view(_SAME_WIDTH_INTEGER[t.element_size()])
            h.update(str(int(bit_patterns.sum(dtype=torch.int64))).encode())
            h.update(t.flatten()[:: max(1, t.numel() // 4096)].float().cpu().numpy().tobytes())
        self.__dict__["_fingerprint_cache"] = (key, h.hexdigest()[:16])
        return self.__dict__["_fingerprint_cache"][1]


# Integer dtypes by element size: the view that reads a tensor's values as their bit patterns.
_SAME_WIDTH_INTEGER = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def module_group_parameters(model: ScaleWiseModel, groups: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """Named parameters of the chosen ``module_groups`` (names as in ``model.named_parameters()``)."""
    available = model.module_groups()
    unknown = [g for g in groups if g not in available]
    if unknown:
        raise ConfigError(f"unknown module group(s) {unknown}; known: {sorted(available)}")
    wanted = {id(p) for g in groups for m in available[g] for p in m.parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in wanted]
