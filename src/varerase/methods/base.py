"""The :class:`Eraser` interface every method implements, and the settings they share."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from varerase.config import dataclass_from_dict
from varerase.data.pairs import PromptPair
from varerase.edits.delta import EditConfig, ParameterEdit
from varerase.edits.edited_model import EditedModel
from varerase.errors import ConfigError
from varerase.models.base import SamplerConfig, ScaleWiseModel, TextCondition
from varerase.runtime.distributed import DistributedContext
from varerase.training.trainer import TrainerConfig, UpdateFn, step_generator


@dataclass
class MethodConfig:
    """Settings every method has. Subclasses add their own and may change defaults.

    ``generation_cfg``, ``top_k``/``top_p`` and ``aux_seed`` fix how the frozen model generates
    auxiliary tokens (METHODS.md §1; reference: CFG 4, temperature 1, seed 42).
    """

    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 2
    seed: int = 42
    groups: list[str] = field(default_factory=lambda: ["cross_attn", "ffn"])
    lora_rank: int = 0
    lora_alpha: float | None = None
    betas: tuple[float, float] = (0.9, 0.97)
    weight_decay: float = 0.005
    grad_clip: float = 5.0
    checkpoint_every: int = 50
    generation_cfg: float = 4.0
    top_k: int = 0
    top_p: float = 0.0
    aux_seed: int = 42
    samples_per_pair: int = 1

    def __post_init__(self) -> None:
        self.groups = list(self.groups)
        self.betas = tuple(self.betas)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.samples_per_pair < 1:
            raise ConfigError(f"samples_per_pair must be ≥ 1, got {self.samples_per_pair}")
        if self.generation_cfg < 0:
            raise ConfigError(f"generation_cfg must be ≥ 0, got {self.generation_cfg}")

    def trainer_config(self) -> TrainerConfig:
        return TrainerConfig(
            steps=self.steps, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay,
            grad_clip=self.grad_clip, seed=self.seed, checkpoint_every=self.checkpoint_every,
        )

    def aux_sampler(self) -> SamplerConfig:
        return SamplerConfig(cfg=self.generation_cfg, temperature=1.0, top_k=self.top_k, top_p=self.top_p)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str | None = None) -> "MethodConfig":
        """Build from a flat dict: unknown keys and ill-typed values are ConfigErrors naming them."""
        return dataclass_from_dict(cls, values, source or cls.__name__)


class Eraser(abc.ABC):
    """A concept-erasure method: owns an edit of a frozen model and the losses that train it.

    ``pairs`` are ``(target c_u, anchor c_a)`` prompt pairs; ``retain_prompts`` are benign prompts
    some methods preserve. ``cache_dir`` holds the teacher cache (auxiliary tokens). ``context``:
    the ranks training together (default: this process alone); each draws its slice of every batch.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    edit_scope: ClassVar[str] = "all"
    trains: ClassVar[bool] = True

    def __init__(
        self,
        model: ScaleWiseModel,
        pairs: Sequence[PromptPair],
        config: MethodConfig,
        retain_prompts: Sequence[str] = (),
        cache_dir: str | Path | None = None,
        progress: bool = True,
        context: DistributedContext | None = None,
    ) -> None:
        if not pairs:
            raise ConfigError("no prompt pairs to erase with")
        self.model = model.eval().requires_grad_(False)
        self.pairs = list(pairs)
        self.config = config
        self.retain_prompts = list(retain_prompts)
        self.cache_dir = cache_dir
        self.progress = progress
        self.context = context or DistributedContext()
        self.edit = ParameterEdit(model, self.edit_config())
        self.edited = EditedModel(model, self.edit)
        self.forward_tokens = 0  # token positions pushed through the transformer by training steps

    def edit_config(self) -> EditConfig:
        """What this method's edit changes (groups, LoRA, scope), from :attr:`config`."""
        return EditConfig(self.config.groups, self.config.lora_rank, self.config.lora_alpha, self.edit_scope)

    def prepare(self) -> None:
        """One-time work before training (teacher caches, frozen targets)."""

    @abc.abstractmethod
    def step(self, index: int, update: UpdateFn) -> dict[str, float]:
        """Compute the losses of training step ``index`` and call ``update(loss)`` per optimiser step."""

    # --- helpers for subclasses ---------------------------------------------------------------
    def sample_indices(self, index: int, population: int, count: int | None = None, stream: int = 0) -> list[int]:
        """This rank's share of ``count`` (default batch size) indices into ``range(population)`` for step ``index``.

        Every rank draws the same global batch and keeps its slice, so the ranks together train on
        the batch a single process would; replays on resume.
        """
        generator = step_generator(self.config.seed + 7919 * stream, index)
        count = count or self.config.batch_size
        return self.context.split_batch(torch.randint(0, population, (count,), generator=generator).tolist())

    def seeded_requests(self, prompts: Sequence[str]) -> list[tuple[str, int]]:
        """``(prompt, seed)`` for ``samples_per_pair`` seeds of every prompt, prompt-major."""
        return [(p, self.config.aux_seed + s) for p in prompts for s in range(self.config.samples_per_pair)]

    def aux_requests(self) -> list[tuple[str, int]]:
        """Every ``(anchor prompt, seed)`` whose auxiliary tokens training uses."""
        return self.seeded_requests([p.anchor for p in self.pairs])

    def encode(self, prompts: Sequence[str]) -> TextCondition:
        return self.model.encode_text(list(prompts))

    def count_teacher_forced(self, batch: int) -> None:
        self.forward_tokens += batch * self.model.num_tokens

    def count_first_scale(self, batch: int) -> None:
        self.forward_tokens += batch

    def edited_model(self) -> EditedModel:
        return self.edited

    def replace_edit(self, edit: ParameterEdit) -> None:
        """Continue with ``edit`` (same config and parameters) in place of :attr:`edit`, e.g. after training it sharded."""
        self.edit = edit
        self.edited = EditedModel(self.model, edit)
