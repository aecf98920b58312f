"""How ranks share the training of an edit: DDP (replicated) or FSDP2 (sharded block by block).

With ``ParallelConfig(strategy="fsdp")`` the edit is not replicated but sharded with FSDP2
(:func:`shard_edit`, ``fully_shard`` per transformer block's deltas): each rank keeps ``1/N`` of
the deltas, their gradients and AdamW state, the part of erasure memory that grows with the
model (docs/distributed.md has the figures); :func:`gather_edit` puts the whole edit back
together after training. The frozen base model stays whole on every rank: it is what the edit is
added to with ``functional_call``, which FSDP-managed weights would ignore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from varerase.edits.delta import ParameterEdit
from varerase.errors import ConfigError
from varerase.models.base import ScaleWiseModel

ParallelStrategy = Literal["ddp", "fsdp"]


@dataclass
class ParallelConfig:
    """How ranks share the training of an edit (used only when there is more than one rank).

    ``ddp``: every rank holds the whole edit and its AdamW state; DDP averages gradients.
    ``fsdp``: FSDP2 (``fully_shard``) shards the edit block by block (one unit per
    :class:`~varerase.edits.delta.EditPart`), with its gradients and AdamW state: each rank
    holds ``1/N`` of them and gathers a block's deltas only while adding them to its weights.
    ``param_dtype`` is the dtype the gathered deltas are sent and added in (None: float32,
    ``"bfloat16"`` halves the traffic); gradients are averaged in ``reduce_dtype``.
    """

    strategy: ParallelStrategy = "ddp"
    param_dtype: str | None = None
    reduce_dtype: str = "float32"
    reshard_after_forward: bool = True  # free a block's gathered deltas after use (gather again in backward)

    def __post_init__(self) -> None:
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"parallel strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            if value is not None and value not in ("float32", "bfloat16", "float16"):
                raise ConfigError(f"{name} must be float32, bfloat16 or float16, got {value!r}")


def _dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


def shard_edit(edit: nn.Module, parts: Sequence[nn.Module], config: ParallelConfig) -> nn.Module:
    """Apply FSDP2 to each of ``parts`` (submodules of ``edit``), then to ``edit`` itself; returns ``edit``, changed in place.

    Afterwards every parameter is a DTensor sharded over all ranks (dim 0). ``edit`` is the FSDP
    root: calling it gathers nothing itself, and each part is gathered when called and freed after
    (``reshard_after_forward``). Every rank must make the same calls. Forward inputs are never
    cast (``cast_forward_inputs=False``): the base weights handed to the parts keep their dtype.
    """
    # Imported here: FSDP loads half a second of modules that single-process runs never use.
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=_dtype(config.param_dtype), reduce_dtype=_dtype(config.reduce_dtype), cast_forward_inputs=False)
    for part in parts:
        fully_shard(part, mp_policy=policy, reshard_after_forward=config.reshard_after_forward)
    fully_shard(edit, mp_policy=policy)
    return edit


def gather_edit(model: ScaleWiseModel, edit: ParameterEdit) -> ParameterEdit:
    """A plain copy of ``edit`` holding its whole tensors, gathered from the ranks if FSDP2 sharded it.

    Collective when ``edit`` is sharded: every rank calls it and gets the same copy.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(edit, options=StateDictOptions(full_state_dict=True))
    copy = ParameterEdit(model, edit.config)
    copy.load_state_dict(full, strict=True)
    return copy
