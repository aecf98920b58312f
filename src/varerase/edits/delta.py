"""Weight edits kept apart from the model they edit.

Every method trains (or computes) an *edit*: a delta for some of the model's parameters, either
full (``W' = W + Δ``) or low-rank (``W' = W + (α/r)·B·A`` for linear weights, peft's LoRA
convention and key names). The original model is never modified, so the frozen teacher ``p_0``
is always the base model itself, and an edit can be *scoped*:

* ``"all"`` — the edited weights are used everywhere (VARE, S-VARE, baselines);
* ``"gated"`` — SACE's scale-gated adapter: the edited weights produce only the logits of the
  confined scales ``0..last_scale`` (scale 0 alone by default); every position of later scales,
  and (``start_context="original"``) the keys/values they attend to at the confined positions,
  come from the original weights (METHODS.md §4); ``start_context="adapted"`` lets later scales
  attend to the confined positions as the edited weights computed them.

Edits are applied with :func:`torch.func.functional_call`, so a method's loss differentiates
through the model without touching its parameters. The overrides ``W + Δ`` come from calling the
edit module itself (:meth:`ParameterEdit.forward`), so a data-parallel wrapper around it works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from varerase.errors import ConfigError
from varerase.models.base import (
    ScaleWiseModel,
    module_group_parameters,
)

EditScope = Literal["all", "gated"]
StartContext = Literal["original", "adapted"]


@dataclass
class EditConfig:
    """What an edit changes: module groups, full or LoRA deltas, and where it acts."""

    groups: Sequence[str] = ("cross_attn", "ffn")
    lora_rank: int = 0  # 0 = full deltas
    lora_alpha: float | None = None  # None = rank (scaling 1)
    scope: EditScope = "all"
    last_scale: int = 0  # scope gated: the edit shapes the logits of scales 0..last_scale
    start_context: StartContext = "original"  # scope gated: whose keys/values later scales see at the confined positions

    def __post_init__(self) -> None:
        self.groups = list(self.groups)
        if self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be ≥ 0, got {self.lora_rank}")
        if self.scope not in ("all", "gated"):
            raise ConfigError(f"scope must be 'all' or 'gated', got {self.scope!r}")
        if self.start_context not in ("original", "adapted"):
            raise ConfigError(f"start context must be 'original' or 'adapted', got {self.start_context!r}")
        if isinstance(self.last_scale, bool) or not isinstance(self.last_scale, int) or self.last_scale < 0:
            raise ConfigError(f"last_scale must be an integer ≥ 0, got {self.last_scale!r}")
        if self.scope != "gated" and (self.start_context == "adapted" or self.last_scale):
            raise ConfigError("start_context='adapted' and last_scale apply to scale-gated edits (scope 'gated') only")


def _key(name: str) -> str:
    """A parameter or module name as a ``ParameterDict``/``ModuleDict`` key (no dots)."""
    return name.replace(".", "__")


class EditPart(nn.Module):
    """The deltas of the edited parameters inside one transformer block (or of all others).

    The unit FSDP2 shards (:func:`varerase.training.parallel.shard_edit`): its deltas are
    gathered only while :meth:`forward` adds them to the block's weights.
    """

    def __init__(self, named_params: list[tuple[str, nn.Parameter]], lora_rank: int) -> None:
        super().__init__()
        self.names = [name for name, _ in named_params]
        self.deltas = nn.ParameterDict()
        self.lora_a = nn.ParameterDict()
        self.lora_b = nn.ParameterDict()
        for name, param in named_params:
            if lora_rank == 0:
                self.deltas[_key(name)] = nn.Parameter(torch.zeros_like(param, dtype=torch.float32))
            else:
                a = torch.empty(lora_rank, param.shape[1], device=param.device)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                self.lora_a[_key(name)] = nn.Parameter(a)
                self.lora_b[_key(name)] = nn.Parameter(torch.zeros(param.shape[0], lora_rank, device=param.device))

    def delta(self, name: str, lora_scaling: float) -> torch.Tensor:
        """The delta of parameter ``name`` (same shape as the parameter)."""
        key = _key(name)
        if key in self.deltas:
            return self.deltas[key]
        return lora_scaling * (self.lora_b[key] @ self.lora_a[key])

    def forward(self, weights: dict[str, torch.Tensor], lora_scaling: float) -> dict[str, torch.Tensor]:
        """``{name: W + Δ}`` for this part's ``names``, given ``weights = {name: W}``, in W's dtype.

        The sum is taken in float32 (W + Δ promotes) and rounded once: a bfloat16 W would swallow a
        small Δ rounded on its own.
        """
        return {name: (weights[name] + self.delta(name, lora_scaling)).to(weights[name].dtype) for name in self.names}


class ParameterEdit(nn.Module):
    """Trainable deltas for the chosen parameters of a model, kept in one :class:`EditPart` per block.

    Full mode keeps one zero-initialised delta per parameter. LoRA mode factorises the delta of
    every 2-D linear weight as ``(α/r)·B·A`` (``A [r, in]`` random, ``B [out, r]`` zero) and leaves
    other parameters (biases, vectors) unedited, as peft does. Parameters inside a block of
    ``model.block_names()`` go into that block's part; all others into part ``"other"``.
    """

    def __init__(self, model: ScaleWiseModel, config: EditConfig) -> None:
        super().__init__()
        self.config = config
        chosen = [
            (name, param)
            for name, param in module_group_parameters(model, config.groups)
            if config.lora_rank == 0 or (param.ndim == 2 and name.endswith(".weight"))
        ]
        if not chosen:
            raise ConfigError(f"module groups {config.groups} hold no parameters this edit can change")
        if config.lora_rank:
            name, smallest = min(((n, min(p.shape)) for n, p in chosen), key=lambda item: item[1])
            if config.lora_rank > smallest:
                raise ConfigError(
                    f"lora_rank {config.lora_rank} exceeds the smallest edited weight's dimension ({smallest}, {name}); "
                    f"use a rank ≤ {smallest} (0: full deltas)"
                )
        self.names = [name for name, _ in chosen]
        by_part: dict[str, list[tuple[str, nn.Parameter]]] = {}
        blocks = model.block_names()
        for name, param in chosen:
            block = next((b for b in blocks if name.startswith(b + ".")), "other")
            by_part.setdefault(_key(block), []).append((name, param))
        self.parts = nn.ModuleDict({key: EditPart(named, config.lora_rank) for key, named in by_part.items()})
        self._part_of = {name: key for key, named in by_part.items() for name, _ in named}

    @property
    def lora_scaling(self) -> float:
        return (self.config.lora_alpha or self.config.lora_rank) / max(self.config.lora_rank, 1)

    @property
    def deltas(self) -> dict[str, nn.Parameter]:
        """Full mode's deltas by parameter name (empty for LoRA)."""
        return {name: self.parts[self._part_of[name]].deltas[_key(name)] for name in self.names if self.config.lora_rank == 0}

    def lora_factors(self, name: str) -> tuple[nn.Parameter, nn.Parameter]:
        """LoRA's ``(A [r, in], B [out, r])`` of parameter ``name``."""
        part = self.parts[self._part_of[name]]
        return part.lora_a[_key(name)], part.lora_b[_key(name)]

    def delta(self, name: str) -> torch.Tensor:
        """The delta of parameter ``name`` (same shape as the parameter)."""
        return self.parts[self._part_of[name]].delta(name, self.lora_scaling)

    def forward(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``{parameter name: W + Δ}`` for :func:`functional_call` on ``model``.

        The module's ``forward`` (not a plain method), and each part called as a module, so that
        a wrapper around the edit (DDP) or its parts (FSDP2) sees each use of the deltas and
        hooks into their backward.
        """
        params = dict(model.named_parameters())
        overrides: dict[str, torch.Tensor] = {}
        for part in self.parts.values():
            overrides.update(part({name: params[name] for name in part.names}, self.lora_scaling))
        return overrides

    def round_merged_weights(self, model: nn.Module, dtype: torch.dtype) -> None:
        """Set every delta to ``Δ := dtype(W + Δ) − W``, computed in float32, in place: the merged weights become ``dtype`` values.

        Pure low-precision training (``update_precision="bfloat16"``) calls this after every
        optimiser step, so no remainder finer than ``dtype`` survives in Δ. ``W + Δ`` (float32)
        then equals the rounded value wherever float32 holds their difference exactly: when W
        is itself a ``dtype`` value (the reference code's blocks, cast to bf16; our Infinity
        port's linear weights under mixed precision), unless W and the new value are over 2^16
        apart in magnitude; and, for a float32 W, when the new value keeps W's sign within a
        factor of 2 (Sterbenz). Elsewhere — mostly a float32 W whose weight changes sign — no
        float32 Δ reaches the ``dtype`` value: ``W + Δ`` is within half a float32 ulp of Δ of it.
        A float32 W moves onto the ``dtype`` grid at the first call, as the reference's cast does.
        A delta sharded by FSDP2 (a DTensor) is rounded against the same shard of W, without
        communication. Full deltas only: a LoRA edit's ``B·A`` cannot follow the rounding (ConfigError).
        """
        if self.config.lora_rank:
            raise ConfigError(f"only full edits can round their merged weights to {dtype}; this edit is LoRA (rank {self.config.lora_rank})")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, delta in self.deltas.items():
                base = params[name].detach().to(delta.device, torch.float32)
                if hasattr(delta, "placements"):  # a DTensor shard: W's matching slice, cut locally
                    from torch.distributed.tensor import distribute_tensor

                    base = distribute_tensor(base, delta.device_mesh, delta.placements, src_data_rank=None)
                delta.copy_((base + delta).to(dtype).float() - base)

    def changed_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Merged weights ``W + Δ`` of every edited parameter in float32 (whatever W's dtype: Δ survives), detached."""
        params = dict(model.named_parameters())
        return {name: (params[name].detach().float() + self.delta(name).detach().float()) for name in self.names}
