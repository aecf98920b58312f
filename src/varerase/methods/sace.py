"""SACE — scale-aware concept erasure (METHODS.md §4; varerase's specification of the paper's ideas).

The SACE paper publishes its ideas, not its formulas or code: this file is our specification of
its three components. The edit is a scale-gated adapter (``EditedModel`` scope ``gated``) confined
to scales ``0..k`` (setting ``scales``: ``0``, the default and the paper's Scale-0; ``0-K``; or
``auto``, which :func:`varerase.api.erase` resolves from ISSA before the run, §4's rule
``P_in(k+1) ≤ 0.1``): the edited weights produce only the confined token maps' distributions;
every later scale, and the keys/values it attends to, come from the original weights.
``context: adapted`` (§4's comparison option; the edit's ``start_context``) lets later scales
attend to the confined positions as the edited weights compute them; training is the same
either way (every loss looks at the confined positions only), only what the edited model
generates differs.

Decisions where §4 leaves room:

* the CFG ``γ`` of the frozen target is ``generation_cfg`` (the sampling guidance);
* the confined scales are always a prefix ``0..k``: a later scale attends to every earlier one,
  so an edit of scale 2 alone would still see scales 0–1 decide the concept; ``scales=K`` for
  ``K > 0`` is refused as ambiguous (write ``0-K``);
* within the confined prefix each scale attends to the earlier confined positions as the edited
  weights compute them (the adapted model runs the whole prefix); only the keys/values that
  scales ``> k`` see come from the original weights. The edited model's distribution is then
  ``p_θ(r_{≤k}) · p_0(r_{>k} | r_{≤k})``, and the student the losses train is exactly the
  distribution the gate samples from;
* ``k > 0``: the context maps of every row are §1's auxiliary tokens of the anchors (the
  teacher cache, generated once with ``generation_cfg``/top-k/top-p/``aux_seed``): a target
  row uses its pair's anchor maps (``samples_per_pair`` seeds each); a benign row ``j`` uses
  those of anchor request ``j mod n``, so no prompt but the anchors is ever generated. The frozen
  target and the original's entropies are recomputed by teacher forcing on those maps over the
  confined positions only (the cache's logits ``z^a`` cover all ``L`` positions and only the
  anchor); generating the cache is not counted in ``forward_tokens``, as for VARE and S-VARE;
* KL and entropies are per unit (per bit); the entropy hinge is taken per position (for
  ``k = 0`` the one position per prompt) after averaging its bits, then every term is averaged
  over the confined positions and the batch, each position weighing the same;
* the benign set of the restorative loss is the anchors, the retain prompts and the null
  condition ``∅`` (with each target's token lengths): guidance combines the edited conditional
  and unconditional branches, so ``∅`` must stay put too;
* default trainable groups: cross-attention, FFN and the attentive text pool (the start token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from varerase.edits.delta import EditConfig
from varerase.errors import ConfigError
from varerase.methods.base import Eraser
from varerase.methods.config import MethodConfig
from varerase.methods.losses import guided, sace_erasure_loss, sace_erasure_target, sace_restoration_loss
from varerase.methods.teacher_cache import TeacherCache
from varerase.models.base import TextCondition
from varerase.training.trainer import TrainerConfig, UpdateFn

SCALES_HELP = "scales must be 0 (scale 0 alone, the paper's), 0-K (scales 0..K), a list [0, 1, …, K] or auto"


def parse_scales(value: Any) -> int | None:
    """The last confined scale ``k`` of a ``scales`` setting (``0``, ``"0-K"``, ``[0, …, K]``), or None for ``"auto"``."""
    if isinstance(value, str) and value.strip() == "auto":
        return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if list(value) != list(range(len(value))):
            raise ConfigError(f"{SCALES_HELP}; a list must be 0, 1, …, K in order, got {list(value)}")
        return len(value) - 1
    if isinstance(value, int) and not isinstance(value, bool):
        if value != 0:
            raise ConfigError(f"scales={value} is ambiguous: SACE confines a prefix of scales; write scales=0-{value} (or 0 for scale 0 alone)")
        return 0
    if isinstance(value, str):
        first, sep, last = value.strip().partition("-")
        if first.strip().isdigit() and (not sep or last.strip().isdigit()):
            if int(first) != 0:
                raise ConfigError(f"confined scales start at 0 (every later scale attends to scale 0): write scales=0-{last.strip() or first}, got {value!r}")
            return int(last) if sep else 0
    raise ConfigError(f"{SCALES_HELP}; got {value!r}")


@dataclass
class SACEConfig(MethodConfig):
    """SACE's settings; ``context`` is another name of ``edit.start_context``; ``scales`` sets ``edit.last_scale`` (see module docstring)."""

    edit_scope = "gated"
    aliases = {"context": "start_context"}

    training: TrainerConfig = field(default_factory=lambda: TrainerConfig(steps=150, lr=1e-3))
    edit: EditConfig = field(default_factory=lambda: EditConfig(groups=["cross_attn", "ffn", "start_token"], scope="gated"))
    scales: Any = 0  # the confined scales 0..k: 0, "0-K", [0, …, K] or "auto"; Any, so that parse_scales words every refusal
    batch_size: int = 8
    eta: float = 0.0  # push away from the target: t = z(c_a) − η (z(c_u) − z(c_a))
    beta: float = 1.0  # entropy hinge weight
    restoration_weight: float = 1.0  # λ_R
    benign_batch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        last = parse_scales(self.scales)
        if self.edit.last_scale not in (0, last):
            raise ConfigError(f"SACE's confined scales are set by scales=0-K; leave last_scale unset (got last_scale={self.edit.last_scale})")
        if last is not None:
            self.edit.last_scale = last

    @property
    def is_auto(self) -> bool:
        """Whether ``scales`` is still ``auto`` (to be resolved from ISSA before a run)."""
        return parse_scales(self.scales) is None


class SACE(Eraser):
    """Erasure confined to scales ``0..k`` with an entropy hinge and restorative preservation (see module docstring)."""

    name = "sace"
    config_class = SACEConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.is_auto:
            raise ConfigError("scales=auto is resolved from ISSA by varerase.api.erase (the CLI's erase); here give scales=0-K")
        num_scales = len(self.model.schedule)
        if self.last_scale >= num_scales:
            raise ConfigError(f"scales=0-{self.last_scale} exceeds the model's {num_scales} scales; the last is {num_scales - 1}")

    @property
    def last_scale(self) -> int:
        """``k``: the losses and the edit look at scales ``0..k``."""
        return self.config.edit.last_scale

    @torch.no_grad()
    def _frozen(self, cond: TextCondition, maps: list[torch.Tensor]) -> torch.Tensor:
        """The frozen model's confined logits ``[B, P, d, 2]``."""
        return self.model.confined_logits(cond, maps, self.last_scale).float()

    def _context_maps(self) -> list[list[torch.Tensor]]:
        """Per anchor request, its auxiliary maps of scales ``0..k−1`` (``[h, w, d]`` each; none for ``k = 0``)."""
        if self.last_scale == 0:
            return [[] for _ in self.pairs]
        cache = TeacherCache(self.model, self.config.aux_sampler(self.model), self.cache_dir)
        requests = self.aux_requests()
        cache.fill(requests, progress=self.progress)
        return [cache.get(prompt, seed).maps[: self.last_scale] for prompt, seed in requests]

    def _stack(self, per_row: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """Rows of maps → one ``[B, h, w, d]`` tensor per confined context scale, on the model's device."""
        return [torch.stack([row[j] for row in per_row]).to(self.model.device) for j in range(self.last_scale)]

    @torch.no_grad()
    def prepare(self) -> None:
        gamma, k = self.config.generation_cfg, self.last_scale
        context = self._context_maps()
        per_pair = len(context) // len(self.pairs)
        rows = [self.pairs[i // per_pair] for i in range(len(context))]
        self.target_maps = self._stack(context)
        cond_u, cond_a = self.encode([p.target for p in rows]), self.encode([p.anchor for p in rows])
        z_u = guided(self._frozen(cond_u, self.target_maps), self._frozen(self.model.null_condition(cond_u), self.target_maps), gamma)
        z_a = guided(self._frozen(cond_a, self.target_maps), self._frozen(self.model.null_condition(cond_a), self.target_maps), gamma)
        self.target_logits = sace_erasure_target(z_a, z_u, self.config.eta)
        self.original_target_logits = self._frozen(cond_u, self.target_maps)
        self.cond_targets = cond_u

        benign = list(dict.fromkeys([p.anchor for p in self.pairs] + self.retain_prompts))
        self.cond_benign = TextCondition.cat([self.encode(benign), self.model.null_condition(self.encode([p.target for p in self.pairs]))])
        self.benign_maps = self._stack([context[j % len(context)] for j in range(self.cond_benign.batch_size)])
        self.original_benign_logits = self._frozen(self.cond_benign, self.benign_maps)
        self.count_confined(4 * len(rows) + self.cond_benign.batch_size, k)

    def step(self, index: int, update: UpdateFn) -> dict[str, float]:
        k = self.last_scale
        chosen = self.sample_indices(index, self.cond_targets.batch_size)
        student = self.edited.confined_logits(self.cond_targets.select(chosen), [m[chosen] for m in self.target_maps], k)
        erase, parts = sace_erasure_loss(self.target_logits[chosen], student, self.original_target_logits[chosen], self.config.beta)

        benign = self.sample_indices(index, self.cond_benign.batch_size, self.config.benign_batch_size, stream=1)
        student_benign = self.edited.confined_logits(self.cond_benign.select(benign), [m[benign] for m in self.benign_maps], k)
        restore = sace_restoration_loss(self.original_benign_logits[benign], student_benign, self.config.restoration_weight)
        update(erase + restore)
        self.count_confined(len(chosen) + len(benign), k)
        return {"erase": erase.item(), "kl": parts["kl"].item(), "entropy_hinge": parts["entropy_hinge"].item(), "restore": restore.item()}
