"""Infinity behind the :class:`~varerase.models.base.ScaleWiseModel` interface.

An :class:`InfinityModel` joins the transformer, the bitwise multi-scale VAE and a text encoder
(Flan-T5 for the official models, MiniLM for the built-in tiny one).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from varerase.config import dataclass_from_dict
from varerase.errors import CheckpointError, ConfigError
from varerase.models import memory
from varerase.models.attention import resolve_backend
from varerase.models.base import (
    ConditionSwitch,
    Generation,
    SamplerConfig,
    ScaleGate,
    ScaleWiseModel,
    TextCondition,
)
from varerase.models.infinity.bsq import CodeAccumulator, unpatchify_bits
from varerase.models.infinity.transformer import InfinityConfig, InfinityTransformer, KVCache, PreparedCondition
from varerase.models.infinity.vae import BitwiseVAE, BitwiseVAEConfig
from varerase.models.loading import load_pretrained_module, read_json_config
from varerase.models.sampling import cfg_combine, sample_rows, sampling_generators
from varerase.models.text import TextEncoder, TextEncoderConfig


class InfinityModel(ScaleWiseModel):
    """Infinity (transformer + bitwise VAE + text encoder) as a :class:`ScaleWiseModel`.

    ``autocast_dtype`` ("bfloat16"/"float16") runs the transformer under ``torch.autocast`` with
    its linear weights stored in that dtype (:meth:`use_mixed_precision`); norms, RoPE and the
    head's output stay in float32 as in the official code. ``default_sampler`` is the
    sampling a user gets without flags (saved with the model).
    """

    token_kind = "bitwise"

    def __init__(
        self,
        transformer: InfinityTransformer,
        vae: BitwiseVAE | None,
        text_encoder: TextEncoder | None,
        autocast_dtype: str | None = None,
        default_sampler: SamplerConfig | None = None,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.schedule = list(transformer.config.schedule)
        self.bits = transformer.config.bits
        self.autocast_dtype = None
        if autocast_dtype is not None:
            self.use_mixed_precision(autocast_dtype)
        self.default_sampler = default_sampler or SamplerConfig()
        self._text_cache = {}

    @property
    def config(self) -> InfinityConfig:
        return self.transformer.config

    def use_mixed_precision(self, dtype: str) -> None:
        """Run the transformer under autocast in ``dtype`` (bfloat16/float16) and store its linear weights in it.

        Autocast computes every linear layer in ``dtype`` anyway, so storing their weights in it
        changes no output and halves the memory they take (what matters for Infinity-2B/8B); norms,
        embeddings, AdaLN gains and ``cfg_uncond`` stay float32. Lossy one way: load again for float32.
        """
        if dtype not in ("bfloat16", "float16"):
            raise ConfigError(f"mixed precision must be bfloat16 or float16, got {dtype!r}")
        self.autocast_dtype = dtype
        for module in self.transformer.modules():
            if isinstance(module, nn.Linear):
                module.to(getattr(torch, dtype))

    def use_attention(self, backend: str) -> None:
        """Run teacher forcing's self-attention with ``backend``: ``auto``, ``sdpa`` or ``flex`` (:mod:`varerase.models.attention`).

        Sets ``config.attention`` (so it is saved with the model); generation is unaffected.
        """
        resolve_backend(backend, self.device)  # an unknown name, or flex where torch lacks it, fails now rather than in the first pass
        self.config.attention = backend

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.autocast_dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=getattr(torch, self.autocast_dtype)):
            yield

    # --- text --------------------------------------------------------------------------------
    def _encode_text_uncached(self, prompts: list[str]) -> TextCondition:
        if self.text_encoder is None:
            raise RuntimeError("this model has no text encoder; pass TextCondition objects instead of prompts")
        with torch.no_grad():
            return self.text_encoder.encode(prompts)

    def null_condition(self, like: TextCondition) -> TextCondition:
        """Infinity's learned ``cfg_uncond`` with the token lengths of ``like``."""
        return self.transformer.null_features(like)

    # --- forward passes -----------------------------------------------------------------------
    def prepare(self, cond: TextCondition) -> PreparedCondition:
        """The transformer's text path for ``cond`` (exposed for methods that reuse it)."""
        with self._autocast():
            return self.transformer.prepare_condition(cond.to(self.device))

    def teacher_forced_logits(self, cond: TextCondition, maps: Sequence[torch.Tensor], gate: ScaleGate | None = None) -> torch.Tensor:
        """See :meth:`ScaleWiseModel.teacher_forced_logits`; returns ``[B, L, d, 2]`` float32.

        With ``gate``: the confined positions' logits come from ``gate.run("confined_logits", …)``;
        the later ones from this model, attending at the confined positions to its own keys/values
        (one more full pass) or, with ``gate.adapted_context``, to the adapted ones.
        """
        if len(maps) != len(self.schedule):
            raise ValueError(f"got {len(maps)} maps for a {len(self.schedule)}-scale schedule")
        maps = [m.to(self.device) for m in maps]
        if gate is None:
            with self._autocast():
                return self.transformer.teacher_forced_logits(self.transformer.prepare_condition(cond.to(self.device)), maps).float()
        positions = self.confined_positions(gate.last_scale)
        context: KVCache | None = [None] * len(self.transformer.blocks) if gate.adapted_context else None
        confined = gate.run("confined_logits", cond, maps, gate.last_scale, context)
        if positions == self.num_tokens:
            return confined
        with self._autocast():
            prepared = self.transformer.prepare_condition(cond.to(self.device))
            if context is None:
                later = self.transformer.teacher_forced_logits(prepared, maps)[:, positions:]
            else:
                later = self.transformer.logits_after_prefix(prepared, maps, context, gate.last_scale)
        return torch.cat([confined, later.float()], dim=1)

    def first_scale_logits(self, cond: TextCondition) -> torch.Tensor:
        """See :meth:`ScaleWiseModel.first_scale_logits`; returns ``[B, 1, d, 2]`` float32."""
        with self._autocast():
            prepared = self.transformer.prepare_condition(cond.to(self.device))
            return self.transformer.first_scale_logits(prepared).float()

    def confined_logits(self, cond: TextCondition, maps: Sequence[torch.Tensor], last_scale: int, context: KVCache | None = None) -> torch.Tensor:
        """See :meth:`ScaleWiseModel.confined_logits`: one pass over the ``P`` confined positions only, ``[B, P, d, 2]`` float32.

        ``context`` (one None per block) is filled with those positions' keys/values (a gate's adapted context).
        """
        maps = [m.to(self.device) for m in maps[:last_scale]]
        with self._autocast():
            prepared = self.transformer.prepare_condition(cond.to(self.device))
            return self.transformer.prefix_logits(prepared, maps, last_scale, context).float()

    def sampling_step(self, prepared: PreparedCondition, scale: int, codes: torch.Tensor | None, caches: KVCache) -> torch.Tensor:
        """One KV-cached sampling step (:meth:`InfinityTransformer.step`): what a :class:`ScaleGate` runs with the adapted weights."""
        return self.transformer.step(prepared, scale, codes, caches)

    def generation_row_bytes(self, guided: bool = True, text_tokens: int = 0) -> int:
        """See :meth:`ScaleWiseModel.generation_row_bytes` (:func:`varerase.models.memory.generation_row_bytes` of this transformer).

        The cosine attention normalises keys with ``norm``, which CUDA's autocast runs in float32,
        so there keys are cached in float32 (as in the official code) and values in the autocast dtype.
        """
        compute = getattr(torch, self.autocast_dtype) if self.autocast_dtype else torch.float32
        keys = torch.float32 if self.device.type == "cuda" else compute
        c = self.config
        return memory.generation_row_bytes(
            c.schedule, c.width, c.depth, c.bits, compute, key_dtype=keys, ffn_hidden=c.ffn_hidden, guided=guided,
            text_tokens=text_tokens, text_channels=c.text_channels,
        )

    @torch.no_grad()
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
        """KV-cached sampling (see :meth:`ScaleWiseModel.generate`).

        With guidance the conditional and unconditional branches run as one batch of ``2B``;
        ``cfg = 1`` at every scale runs the conditional branch alone (and refuses a ``negative``,
        which acts only through guidance). The unconditional branch is ``negative`` where given
        (as the official ``gen_one_img``'s negative prompt), else ``cfg_uncond``.

        The rows are sampled in sub-batches of :meth:`generation_batch_size` (all at once off
        CUDA); each one's KV caches and prepared conditions are freed before the next, and the VAE
        decodes afterwards in calls of a fixed number of pixels (:meth:`decode`). With per-row
        seeds a row's maps do not depend on the sub-batch it was drawn in (up to the kernels'
        rounding, see README); a single int seed draws from one generator in row order, which a
        split changes.
        """
        cond = cond.to(self.device)
        B = cond.batch_size
        num_scales = len(self.schedule)
        guided = any(c != 1 for c in sampler.cfgs(num_scales))
        if switch is not None and not 0 <= switch.scale <= num_scales:
            raise ValueError(f"switch scale {switch.scale} outside 0..{num_scales}")
        if negative is not None:
            if not guided:
                raise ConfigError("a negative prompt acts through guidance, which cfg = 1 turns off; raise cfg")
            if negative.batch_size not in (1, B):
                raise ValueError(f"negative condition has batch {negative.batch_size}; give 1 (for every row) or {B}")
            negative = negative.to(self.device)
            if negative.batch_size == 1:
                negative = TextCondition(negative.features.expand(B, -1, -1), negative.mask.expand(B, -1))
        generators = sampling_generators(seed, B, self.device)
        text_tokens = max(c.features.shape[1] for c in (cond, negative, switch and switch.condition) if c is not None)
        rows = self.generation_batch_size(B, guided, text_tokens)
        parts = []
        for first in range(0, B, rows):
            index = slice(first, first + rows)
            part_switch = None if switch is None else ConditionSwitch(switch.scale, switch.condition.to(self.device).select(index))
            part_generators = generators[index] if isinstance(generators, list) else generators
            part_negative = None if negative is None else negative.select(index)
            parts.append(self._sample(cond.select(index), sampler, part_generators, part_switch, gate, part_negative))
        generation = Generation.cat(parts)
        if decode:
            generation.images = self.decode(generation.maps)
        return generation

    def _sample(
        self,
        cond: TextCondition,
        sampler: SamplerConfig,
        generators: list[torch.Generator] | torch.Generator | None,
        switch: ConditionSwitch | None,
        gate: ScaleGate | None,
        negative: TextCondition | None,
    ) -> Generation:
        """One pass of :meth:`generate` over the rows of ``cond`` (all on the device); maps and logits, no images.

        With ``gate`` the confined scales are sampled from a second, adapted stream (its own text
        path and KV caches, the same operations as this model's, so adapted weights equal to these
        give these logits bit for bit); this model's own stream still runs over them for the keys/values
        later scales attend to, unless the gate hands on the adapted ones.
        """
        B = cond.batch_size
        num_scales = len(self.schedule)
        cfgs, temps = sampler.cfgs(num_scales), sampler.temperatures(num_scales)
        guided = any(c != 1 for c in cfgs)

        def batched(c: TextCondition) -> TextCondition:
            return TextCondition.cat([c, negative if negative is not None else self.null_condition(c)]) if guided else c

        branch_conditions = [batched(cond)]
        if switch is not None:
            branch_conditions.append(batched(switch.condition))

        maps, logits_per_scale = [], []
        caches: KVCache = [None] * len(self.transformer.blocks)
        adapted_caches: KVCache = [None] * len(self.transformer.blocks)
        accumulator = CodeAccumulator(self.schedule, self.config.patchify)
        with self._autocast():
            prepared = [self.transformer.prepare_condition(c) for c in branch_conditions]
            adapted = [gate.run("prepare", c) for c in branch_conditions] if gate is not None else None
            codes = None
            for k, (h, w) in enumerate(self.schedule):
                active = 1 if switch is not None and k >= switch.scale else 0
                if gate is not None and k <= gate.last_scale:
                    raw = gate.run("sampling_step", adapted[active], k, codes, adapted_caches).float()
                    if not gate.adapted_context:
                        self.transformer.step(prepared[active], k, codes, caches)  # the original keys/values, for the later scales
                    elif k == gate.last_scale:
                        caches[:] = adapted_caches  # later scales attend to the confined positions as the adapted weights computed them
                else:
                    raw = self.transformer.step(prepared[active], k, codes, caches).float()
                combined = cfg_combine(raw[:B], raw[B:], cfgs[k]) if guided else raw
                logits_per_scale.append(combined)
                bits = sample_rows(combined, temps[k], sampler.top_k, sampler.top_p, generators)
                token_map = bits.view(B, h, w, self.bits)
                maps.append(token_map)
                if k + 1 < num_scales:
                    accumulator.add(token_map)
                    codes = accumulator.next_input(k + 1)
        return Generation(maps=maps, logits=logits_per_scale)

    @torch.no_grad()
    def decode(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Token maps → images ``[B, 3, H, W]`` in ``[0, 1]`` through the VAE decoder.

        Decodes :func:`~varerase.models.memory.decode_batch_size` images per call (one at 1024²,
        all of a batch of the tiny model's 32² images): a number fixed by the image size, so the
        images do not depend on the device's free memory.
        """
        if self.vae is None:
            raise RuntimeError("this model has no VAE; load one to decode images")
        bits = [unpatchify_bits(m) if self.config.patchify else m for m in maps]
        _, h, w, _ = bits[-1].shape
        rows = memory.decode_batch_size(h * w * self.vae.config.downsample_factor**2)
        images = [self.vae.decode_maps([b[i : i + rows].to(self.device) for b in bits]) for i in range(0, bits[0].shape[0], rows)]
        return ((torch.cat(images).float() + 1) / 2).clamp(0, 1)

    def module_groups(self) -> dict[str, list[nn.Module]]:
        """Groups of the transformer (see :meth:`ScaleWiseModel.module_groups`).

        ``cross_attn`` holds q, kv, the value bias and the output projection of every block
        (what S-VARE's reference code trains, with ``ffn``); ``start_token`` is the attentive pool
        that turns the text into the scale-0 input and the AdaLN condition. ``cross_attn_kv`` and
        ``start_token_kv`` are the linear maps from text features to keys/values (UCE edits them).
        """
        t = self.transformer
        return {
            "self_attn": [b.sa for b in t.blocks],
            "cross_attn": [b.ca for b in t.blocks],
            "cross_attn_kv": [b.ca.mat_kv for b in t.blocks],
            "ffn": [b.ffn for b in t.blocks],
            "norms": [t.text_norm] + [b.ca_norm for b in t.blocks],
            "adaln": [t.shared_ada_lin, t.head_nm],
            "text_proj": [t.text_proj_for_ca],
            "start_token": [t.text_proj_for_sos],
            "start_token_kv": [t.text_proj_for_sos.ca.mat_kv],
            "embeddings": [t.word_embed, t.lvl_embed],
            "head": [t.head],
        }

    def block_names(self) -> list[str]:
        return [f"transformer.blocks.{i}" for i in range(len(self.transformer.blocks))]

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """See :meth:`ScaleWiseModel.set_activation_checkpointing`: checkpoints every transformer block."""
        self.transformer.activation_checkpointing = bool(enabled)

    # --- our own format -------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json``, ``transformer.safetensors`` and ``vae.safetensors`` (safetensors only).

        The text encoder is recorded by its source (:meth:`TextEncoder.saved_config`), never by the
        folder it happens to lie in on this machine, so the folder loads wherever it is copied.
        """
        from varerase.io import atomic_save_safetensors, atomic_write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"transformer": asdict(self.config), "autocast_dtype": self.autocast_dtype, "default_sampler": asdict(self.default_sampler)}
        if self.vae is not None:
            config["vae"] = asdict(self.vae.config)
            atomic_save_safetensors(self.vae.state_dict(), directory / "vae.safetensors")
        if self.text_encoder is not None:
            config["text_encoder"] = asdict(self.text_encoder.saved_config(directory))
        atomic_save_safetensors(self.transformer.state_dict(), directory / "transformer.safetensors")
        atomic_write_json(config, directory / "config.json")

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        text_encoder: TextEncoder | None = None,
        device: str | torch.device = "cpu",
    ) -> "InfinityModel":
        """Load what :meth:`save_pretrained` wrote (strict). ``text_encoder`` overrides the saved reference."""
        directory = Path(directory)
        config = read_json_config(directory / "config.json")
        if not isinstance(config.get("transformer"), dict):
            raise CheckpointError(f"{directory / 'config.json'} has no 'transformer' settings")
        source = str(directory / "config.json")
        # Built on the meta device and checked against the weight files' headers first: a config that
        # does not fit its weights fails before anything is allocated (load_pretrained_module).
        transformer_config = dataclass_from_dict(InfinityConfig, config["transformer"], f"{source}: transformer")
        transformer = load_pretrained_module(lambda: InfinityTransformer(transformer_config), directory / "transformer.safetensors", device)
        vae = None
        if "vae" in config and (directory / "vae.safetensors").exists():
            vae_config = dataclass_from_dict(BitwiseVAEConfig, config["vae"], f"{source}: vae")
            vae = load_pretrained_module(lambda: BitwiseVAE(vae_config), directory / "vae.safetensors", device)
        if text_encoder is None and "text_encoder" in config:
            saved = TextEncoderConfig.from_saved(config["text_encoder"], f"{source}: text_encoder")
            text_encoder = TextEncoder.from_config(saved, relative_to=directory)
        sampler = dataclass_from_dict(SamplerConfig, config["default_sampler"], f"{source}: default_sampler") if "default_sampler" in config else None
        model = cls(transformer, vae, text_encoder, config.get("autocast_dtype"), sampler)
        return model.to(device).eval().requires_grad_(False)
