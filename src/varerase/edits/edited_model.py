"""A base model seen through an edit: :class:`EditedModel`, itself a :class:`ScaleWiseModel`.

Every call runs the base model with :func:`torch.func.functional_call`, its edited parameters
replaced by ``W + Δ`` from the edit (or, for a scale-gated edit, only where the gate says), so
the base model's own parameters are never written and stay the frozen teacher.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

from varerase.edits.delta import EditScope, ParameterEdit
from varerase.models.base import (
    ConditionSwitch,
    Generation,
    SamplerConfig,
    ScaleGate,
    ScaleWiseModel,
    TextCondition,
)


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

    def _overrides(self) -> dict[str, torch.Tensor]:
        """``{name: W + Δ}`` for :func:`functional_call` on the method caller."""
        return {f"model.{k}": v for k, v in self._edit_forward(self.base).items()}

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self._caller, self._overrides(), (method, *args), kwargs, strict=False)

    def gate(self) -> ScaleGate:
        """Scope ``gated``: the :class:`ScaleGate` the base model applies, its weights ``W + Δ`` merged once for the whole pass."""
        overrides = self._overrides()

        def run(method: str, *args: Any) -> Any:
            return functional_call(self._caller, overrides, (method, *args), strict=False)

        return ScaleGate(self.edit.config.last_scale, run, adapted_context=self.edit.config.start_context == "adapted")

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

    def encode_text(self, prompts: Sequence[str], cache: bool = True) -> TextCondition:
        return self.base.encode_text(prompts, cache)

    def _encode_text_uncached(self, prompts: list[str]) -> TextCondition:
        return self.base._encode_text_uncached(prompts)

    def null_condition(self, like: TextCondition) -> TextCondition:
        return self._call("null_condition", like) if self.scope == "all" else self.base.null_condition(like)

    def first_scale_logits(self, cond: TextCondition) -> torch.Tensor:
        return self._call("first_scale_logits", cond)

    def confined_logits(self, cond: TextCondition, maps: Sequence[torch.Tensor], last_scale: int) -> torch.Tensor:
        """The edited weights' logits of scales ``0..last_scale`` (for a gated edit with ``last_scale`` up to
        its own, what its gate samples from): SACE's student, with gradients to the edit."""
        return self._call("confined_logits", cond, maps, last_scale)

    def teacher_forced_logits(self, cond: TextCondition, maps: Sequence[torch.Tensor], gate: ScaleGate | None = None) -> torch.Tensor:
        if self.scope == "all":
            return self._call("teacher_forced_logits", cond, maps, gate)
        return self.base.teacher_forced_logits(cond, maps, gate or self.gate())

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
        if self.scope == "all":
            return self._call("generate", cond, sampler, seed, switch=switch, gate=gate, decode=decode, negative=negative)
        return self.base.generate(cond, sampler, seed, switch=switch, gate=gate or self.gate(), decode=decode, negative=negative)

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
        if self.edit.config.last_scale:
            h.update(f":{self.edit.config.last_scale}".encode())
        if self.edit.config.start_context == "adapted":
            h.update(b":adapted")
        return h.hexdigest()[:16]
