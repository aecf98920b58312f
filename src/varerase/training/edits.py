"""Weight edits kept apart from the model they edit.

Every method trains (or computes) an *edit*: a delta for some of the model's parameters, either
full (``W' = W + Δ``) or low-rank (``W' = W + (α/r)·B·A`` for linear weights, peft's LoRA
convention and key names). The original model is never modified, so the frozen teacher ``p_0``
is always the base model itself, and an edit can be *scoped*:

* ``"all"`` — the edited weights are used everywhere (VARE, S-VARE, baselines);
* ``"scale0"`` — SACE's scale-gated adapter: the edited weights produce only the scale-0 logits;
  every position of scales ≥ 1, and (``start_context="original"``) the start position's cached
  keys/values, come from the original weights (METHODS.md §4); ``start_context="adapted"`` lets
  later scales attend to the start position as the edited weights computed it.

Edits are applied with :func:`torch.func.functional_call`, so a method's loss differentiates
through the model without touching its parameters. The overrides ``W + Δ`` come from calling the
edit module itself (:meth:`ParameterEdit.forward`), so a data-parallel wrapper around it works.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from safetensors import safe_open
from torch import nn
from torch.func import functional_call

from varerase.errors import CheckpointError, ConfigError
from varerase.io import atomic_save_safetensors
from varerase.models.base import (
    ConditionSwitch,
    Generation,
    SamplerConfig,
    ScaleWiseModel,
    StartOverride,
    StartStep,
    TextCondition,
    module_group_parameters,
)

EditScope = Literal["all", "scale0"]
StartContext = Literal["original", "adapted"]


@dataclass
class EditConfig:
    """What an edit changes: module groups, full or LoRA deltas, and where it acts."""

    groups: Sequence[str] = ("cross_attn", "ffn")
    lora_rank: int = 0  # 0 = full deltas
    lora_alpha: float | None = None  # None = rank (scaling 1)
    scope: EditScope = "all"
    start_context: StartContext = "original"  # scope scale0: whose keys/values later scales see at the start position

    def __post_init__(self) -> None:
        self.groups = list(self.groups)
        if self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be ≥ 0, got {self.lora_rank}")
        if self.scope not in ("all", "scale0"):
            raise ConfigError(f"scope must be 'all' or 'scale0', got {self.scope!r}")
        if self.start_context not in ("original", "adapted"):
            raise ConfigError(f"start context must be 'original' or 'adapted', got {self.start_context!r}")
        if self.start_context == "adapted" and self.scope != "scale0":
            raise ConfigError("start_context='adapted' applies to scale-gated edits (scope 'scale0') only")


def _key(name: str) -> str:
    """A parameter or module name as a ``ParameterDict``/``ModuleDict`` key (no dots)."""
    return name.replace(".", "__")


class EditPart(nn.Module):
    """The deltas of the edited parameters inside one transformer block (or of all others).

    The unit FSDP2 shards (:func:`varerase.training.distributed.shard_edit`): its deltas are
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

    def changed_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Merged weights ``W + Δ`` of every edited parameter in float32 (whatever W's dtype: Δ survives), detached."""
        params = dict(model.named_parameters())
        return {name: (params[name].detach().float() + self.delta(name).detach().float()) for name in self.names}

    # --- files -------------------------------------------------------------------------------
    def save(self, path: str | Path, model: nn.Module, extra_metadata: dict[str, str] | None = None) -> None:
        """Write ``edit.safetensors``: merged changed weights (full) or LoRA factors with peft's key names."""
        metadata = {"format": "varerase-edit", "scope": self.config.scope, "start_context": self.config.start_context, "groups": ",".join(self.config.groups)}
        if self.config.lora_rank == 0:
            tensors = self.changed_weights(model)
            metadata["kind"] = "weights"
        else:
            tensors = {}
            for name in self.names:
                module_name = name[: -len(".weight")]
                lora_a, lora_b = self.lora_factors(name)
                tensors[f"{module_name}.lora_A.weight"] = lora_a.detach()
                tensors[f"{module_name}.lora_B.weight"] = lora_b.detach()
            metadata.update(kind="lora", rank=str(self.config.lora_rank), alpha=str(self.config.lora_alpha or self.config.lora_rank))
        metadata.update(extra_metadata or {})
        atomic_save_safetensors(tensors, path, metadata=metadata)


def gather_edit(model: ScaleWiseModel, edit: ParameterEdit) -> ParameterEdit:
    """A plain copy of ``edit`` holding its whole tensors, gathered from the ranks if FSDP2 sharded it.

    Collective when ``edit`` is sharded: every rank calls it and gets the same copy.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(edit, options=StateDictOptions(full_state_dict=True))
    copy = ParameterEdit(model, edit.config)
    copy.load_state_dict(full, strict=True)
    return copy


def load_edit(model: ScaleWiseModel, path: str | Path) -> "EditedModel":
    """Read an ``edit.safetensors`` written by :meth:`ParameterEdit.save` and apply it to ``model``."""
    path = Path(path)
    if path.is_dir():
        path = path / "edit.safetensors"
    if not path.exists():
        raise CheckpointError(f"no edit at {path}; pass a run directory or its edit.safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:
        raise CheckpointError(f"could not read {path} as safetensors: {error}") from error
    if metadata.get("format") != "varerase-edit":
        raise CheckpointError(f"{path} is not a varerase edit (no 'format: varerase-edit' metadata)")
    params = dict(model.named_parameters())
    kind = metadata.get("kind")
    config = EditConfig(
        groups=metadata.get("groups", "").split(",") if metadata.get("groups") else (),
        lora_rank=int(metadata.get("rank", 0)) if kind == "lora" else 0,
        lora_alpha=float(metadata["alpha"]) if kind == "lora" else None,
        scope=metadata.get("scope", "all"),
        start_context=metadata.get("start_context", "original"),
    )
    edit = ParameterEdit(model, config)
    if kind == "weights":
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise CheckpointError(f"{path} edits parameters this model does not have: {unknown[:10]}")
        expected = set(edit.names)
        if set(tensors) != expected:
            raise CheckpointError(f"{path} edits {len(tensors)} parameters but groups {config.groups} hold {len(expected)}")
        deltas = edit.deltas
        for name, weight in tensors.items():
            if weight.shape != params[name].shape:
                raise CheckpointError(f"{path}: {name} has shape {tuple(weight.shape)}, model has {tuple(params[name].shape)}")
            deltas[name].data = (weight.float() - params[name].detach().float()).to(params[name].device)
    elif kind == "lora":
        for name in edit.names:
            module_name = name[: -len(".weight")]
            for factor, param in zip(("lora_A", "lora_B"), edit.lora_factors(name)):
                tensor_name = f"{module_name}.{factor}.weight"
                if tensor_name not in tensors:
                    raise CheckpointError(f"{path} lacks {tensor_name}")
                if tensors[tensor_name].shape != param.shape:
                    raise CheckpointError(f"{path}: {tensor_name} has shape {tuple(tensors[tensor_name].shape)}, expected {tuple(param.shape)}")
                param.data = tensors[tensor_name].to(param.device, torch.float32)
    else:
        raise CheckpointError(f"{path} has unknown edit kind {kind!r}")
    return EditedModel(model, edit.requires_grad_(False))


class _MethodCall(nn.Module):
    """Lets :func:`functional_call` run any method of a model, not only ``forward``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.model, method)(*args, **kwargs)


class EditedModel(ScaleWiseModel):
    """A base model seen through an edit; itself a :class:`ScaleWiseModel`.

    Gradients flow to the edit's parameters; the base model's parameters are never changed.
    """

    def __init__(self, base: ScaleWiseModel, edit: ParameterEdit) -> None:
        super().__init__()
        self.base = base
        self.edit = edit
        self.schedule = base.schedule
        self.token_kind = base.token_kind
        self.bits = base.bits
        self.vocab_size = base.vocab_size
        self.default_sampler = base.default_sampler
        self._caller = _MethodCall(base)
        # The module whose call yields the overrides: the edit, or a wrapper around it while
        # training in parallel. Set without registering it: the edit is a submodule already.
        object.__setattr__(self, "_edit_forward", edit)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        overrides = {f"model.{k}": v for k, v in self._edit_forward(self.base).items()}
        return functional_call(self._caller, overrides, (method, *args), kwargs, strict=False)

    @contextmanager
    def edit_called_through(self, wrapper: nn.Module) -> Iterator[None]:
        """Within the block, obtain the overrides by calling ``wrapper`` (e.g. DDP around :attr:`edit`), so its hooks fire."""
        object.__setattr__(self, "_edit_forward", wrapper)
        try:
            yield
        finally:
            object.__setattr__(self, "_edit_forward", self.edit)

    @property
    def scope(self) -> EditScope:
        return self.edit.config.scope

    def encode_text(self, prompts: Sequence[str]) -> TextCondition:
        return self.base.encode_text(prompts)

    def _encode_text_uncached(self, prompts: list[str]) -> TextCondition:
        return self.base._encode_text_uncached(prompts)

    def null_condition(self, like: TextCondition) -> TextCondition:
        return self._call("null_condition", like) if self.scope == "all" else self.base.null_condition(like)

    def first_scale_logits(self, cond: TextCondition) -> torch.Tensor:
        return self._call("first_scale_logits", cond)

    def start_step(self, cond: TextCondition, with_context: bool = False) -> StartStep:
        return self._call("start_step", cond, with_context)

    def _gated_start(self, cond: TextCondition) -> StartStep:
        """Scope ``scale0``: the edited scale-0 step, with the start position's context when ``start_context`` is adapted."""
        return self.start_step(cond, with_context=self.edit.config.start_context == "adapted")

    def teacher_forced_logits(self, cond: TextCondition, maps: Sequence[torch.Tensor], start: StartStep | None = None) -> torch.Tensor:
        if self.scope == "all":
            return self._call("teacher_forced_logits", cond, maps, start)
        return self.base.teacher_forced_logits(cond, maps, start or self._gated_start(cond))

    def generate(
        self,
        cond: TextCondition,
        sampler: SamplerConfig,
        seed: int | Sequence[int] | None = None,
        *,
        switch: ConditionSwitch | None = None,
        start_override: StartOverride | None = None,
        decode: bool = True,
    ) -> Generation:
        if self.scope == "all":
            return self._call("generate", cond, sampler, seed, switch=switch, start_override=start_override, decode=decode)
        return self.base.generate(cond, sampler, seed, switch=switch, start_override=start_override or self._gated_start, decode=decode)

    def decode(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.base.decode(maps)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.base.set_activation_checkpointing(enabled)

    def module_groups(self) -> dict[str, list[nn.Module]]:
        return self.base.module_groups()

    def block_names(self) -> list[str]:
        return self.base.block_names()

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256(self.base.fingerprint().encode())
        for name in self.edit.names:
            h.update(name.encode())
            h.update(self.edit.delta(name).detach().float().cpu().numpy().tobytes())
        h.update(self.scope.encode())
        if self.edit.config.start_context == "adapted":
            h.update(b":adapted")
        return h.hexdigest()[:16]
