"""UCE-xattn (METHODS.md §6): a closed-form edit of the text→key/value maps; no training.

For every ``nn.Linear`` ``W`` in ``module_groups()["cross_attn_kv"]`` (with ``edit_start_token``
also ``start_token_kv``, the attentive pool that forms the start token) UCE minimises

``Σ_u ‖W'e_u − W e_a‖² + s·Σ_p ‖W'e_p − W e_p‖² + λ‖W' − W‖²``

over text features ``e`` that enter ``W``, whose solution is
``W' = (Σ W e_a e_uᵀ + s·Σ W e_p e_pᵀ + λW)(Σ e_u e_uᵀ + s·Σ e_p e_pᵀ + λI)⁻¹``
(``s = preserve_scale``). The result is stored as the full deltas ``W' − W`` of an ordinary
:class:`~varerase.edits.delta.ParameterEdit`, so it saves, loads and evaluates like every
trained edit.

Decisions where §6 leaves room:

* ``e`` is what ``W`` actually receives — text features after the model's own text path (for
  Infinity: RMS norm, then ``text_proj_for_ca`` for the blocks). They are read during one
  ``first_scale_logits`` pass, where every cross-attention runs once for the start position.
  They are read by intercepting ``F.linear`` calls on ``W``'s weight, not by module forward
  hooks: Infinity's cross-attention calls ``F.linear`` on ``mat_kv.weight`` directly (to fuse
  the value bias), so hooks on the ``nn.Linear`` never fire.
* Pairs ``(e_u, e_a)``: when ``c_u`` and ``c_a`` have the same number of real tokens, token ``i``
  of ``c_u`` maps to token ``i`` of ``c_a`` (prompt pairs usually differ in one word); otherwise
  positions do not correspond, and each prompt contributes one pair of mean token features.
* Preservation ``e_p``: every real token of the retain prompts and the anchors (each prompt once).
* Only weights change: a bias adds the same vector to both sides of every term.
* Defaults ``λ = 0.1``, ``s = 1`` are our choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from varerase.edits.delta import EditConfig
from varerase.errors import ConfigError
from varerase.methods.base import Eraser
from varerase.methods.config import MethodConfig
from varerase.models.base import ScaleWiseModel, TextCondition
from varerase.training.trainer import TrainerConfig, UpdateFn

KV_GROUPS = ("cross_attn_kv", "start_token_kv")


@dataclass
class UCEConfig(MethodConfig):
    """UCE's settings: no ``training`` section (closed form); ``edit.groups`` follows ``edit_start_token``; ``lora_rank`` must stay 0."""

    training: TrainerConfig | None = None  # closed form: nothing to train
    edit: EditConfig = field(default_factory=lambda: EditConfig(groups=["cross_attn_kv"]))
    lam: float = 0.1  # λ: pull toward the original weights (keeps the solve well posed)
    preserve_scale: float = 1.0  # s: weight of the preservation features
    edit_start_token: bool = False  # also edit the attentive text pool that forms the start token

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.training is not None:
            raise ConfigError("UCE is closed-form and takes no training settings; leave steps, lr and the other training settings unset")
        if self.edit.lora_rank != 0:
            raise ConfigError(f"UCE computes full weights; leave lora_rank at 0 (got {self.edit.lora_rank})")
        if not self.lam > 0:
            raise ConfigError(f"lam must be > 0 (it makes the solve well posed), got {self.lam}")
        if self.preserve_scale < 0:
            raise ConfigError(f"preserve_scale must be ≥ 0, got {self.preserve_scale}")
        outside = sorted(set(self.edit.groups) - set(KV_GROUPS))
        if outside:
            raise ConfigError(f"UCE edits only the key/value maps {list(KV_GROUPS)}, not {outside}; use edit_start_token for the start token")
        self.edit = replace(self.edit, groups=["cross_attn_kv"] + (["start_token_kv"] if self.edit_start_token else []))


def uce_closed_form(
    weight: torch.Tensor,
    erased: torch.Tensor,
    anchors: torch.Tensor,
    preserved: torch.Tensor,
    lam: float,
    preserve_scale: float = 1.0,
) -> torch.Tensor:
    """UCE's minimiser ``W'`` (see module docstring), in float64.

    ``weight`` ``[C_out, C_in]``; ``erased`` and ``anchors`` ``[N_u, C_in]`` (row ``i`` of each is
    one pair ``(e_u, e_a)``); ``preserved`` ``[N_p, C_in]``. Returns ``[C_out, C_in]`` float64.
    """
    weight, erased, anchors, preserved = (t.double() for t in (weight, erased, anchors, preserved))
    regulariser = lam * torch.eye(weight.shape[1], dtype=torch.float64, device=weight.device)
    preserved_second_moment = preserve_scale * preserved.T @ preserved
    inputs_moment = erased.T @ erased + preserved_second_moment + regulariser  # Σ e_u e_uᵀ + s Σ e_p e_pᵀ + λI
    targets_moment = weight @ (anchors.T @ erased + preserved_second_moment + regulariser)  # Σ W e_a e_uᵀ + …
    return torch.linalg.solve(inputs_moment, targets_moment, left=False)  # W'·inputs_moment = targets_moment


class _LinearInputs(TorchFunctionMode):
    """Records the input of every ``F.linear`` call (module or functional) whose weight is one of ``weights``."""

    def __init__(self, weights: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self._slot = {id(w): i for i, w in enumerate(weights)}
        self.inputs: list[list[torch.Tensor]] = [[] for _ in weights]

    def __torch_function__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            if id(weight) in self._slot:
                self.inputs[self._slot[id(weight)]].append(x.detach())
        return func(*args, **kwargs)


@torch.no_grad()
def kv_text_features(model: ScaleWiseModel, linears: dict[str, nn.Linear], cond: TextCondition) -> dict[str, torch.Tensor]:
    """The text features ``[B, T, C_in]`` (float64) each of ``linears`` receives while ``model`` reads ``cond``.

    One ``first_scale_logits`` pass: every cross-attention runs once for the start position.
    Rows keep ``cond``'s padding; select real tokens with ``cond.mask``.
    """
    with _LinearInputs([linear.weight for linear in linears.values()]) as capture:
        model.first_scale_logits(cond)
    features = {}
    for name, inputs in zip(linears, capture.inputs):
        if len(inputs) != 1:
            raise RuntimeError(f"the key/value map {name} received text {len(inputs)} times in one start-position pass; UCE needs exactly once")
        features[name] = inputs[0].double()
    return features


def paired_token_features(
    erased: torch.Tensor, erased_mask: torch.Tensor, anchors: torch.Tensor, anchor_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``(e_u, e_a)`` ``[N, C_in]`` each from prompt features ``[B, T, C_in]`` and masks ``[B, T]``.

    Token by token when a pair's prompts have the same number of real tokens, else one row of mean features.
    """
    rows_erased, rows_anchor = [], []
    for e_u, m_u, e_a, m_a in zip(erased, erased_mask, anchors, anchor_mask):
        e_u, e_a = e_u[m_u], e_a[m_a]
        if len(e_u) != len(e_a):
            e_u, e_a = e_u.mean(0, keepdim=True), e_a.mean(0, keepdim=True)
        rows_erased.append(e_u)
        rows_anchor.append(e_a)
    return torch.cat(rows_erased), torch.cat(rows_anchor)


class UCE(Eraser):
    """Closed-form key/value edit computed in :meth:`prepare`; its config has no ``training`` (see module docstring)."""

    name = "uce"
    config_class = UCEConfig

    def kv_linears(self) -> dict[str, nn.Linear]:
        """The edited maps by their weight's parameter name."""
        parameter_names = {id(p): n for n, p in self.model.named_parameters()}
        groups = self.model.module_groups()
        return {parameter_names[id(linear.weight)]: linear for g in self.config.edit.groups for linear in groups[g]}

    @torch.no_grad()
    def prepare(self) -> None:
        """Collect text features, solve for every map and write ``W' − W`` into the edit's deltas."""
        linears = self.kv_linears()
        cond_erased = self.encode([p.target for p in self.pairs])
        cond_anchor = self.encode([p.anchor for p in self.pairs])
        cond_preserved = self.encode(list(dict.fromkeys([p.anchor for p in self.pairs] + self.retain_prompts)))
        erased = kv_text_features(self.model, linears, cond_erased)
        anchors = kv_text_features(self.model, linears, cond_anchor)
        preserved = kv_text_features(self.model, linears, cond_preserved)
        self.count_first_scale(cond_erased.batch_size + cond_anchor.batch_size + cond_preserved.batch_size)
        for name, linear in linears.items():
            e_u, e_a = paired_token_features(erased[name], cond_erased.mask, anchors[name], cond_anchor.mask)
            new_weight = uce_closed_form(linear.weight, e_u, e_a, preserved[name][cond_preserved.mask], self.config.lam, self.config.preserve_scale)
            self.edit.delta(name).copy_(new_weight - linear.weight.double())

    def step(self, index: int, update: UpdateFn) -> dict[str, float]:
        raise RuntimeError("UCE is closed-form: its edit is computed in prepare(), there are no training steps")
