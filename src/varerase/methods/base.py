"""The :class:`Eraser` interface every method implements, and the eraser families methods share.

* :class:`AuxiliaryTokenEraser` — trained on the anchors' auxiliary tokens (VARE, S-VARE);
* :class:`OwnGenerationEraser` — trained on the frozen model's own generations for the targets (naive, ESD).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar, Sequence

import torch

from varerase.data.pairs import PromptPair
from varerase.edits.delta import ParameterEdit
from varerase.edits.edited_model import EditedModel
from varerase.errors import ConfigError
from varerase.methods.config import MethodConfig
from varerase.methods.teacher_cache import TeacherCache
from varerase.models.base import ScaleWiseModel, TextCondition
from varerase.runtime.distributed import DistributedContext
from varerase.training.trainer import UpdateFn, step_generator


class Eraser(abc.ABC):
    """A concept-erasure method: owns an edit of a frozen model and the losses that train it.

    ``pairs`` are ``(target c_u, anchor c_a)`` prompt pairs; ``retain_prompts`` are benign prompts
    some methods preserve. ``config`` is the run's settings tree (of :attr:`config_class`); its
    ``edit`` section says what the edit changes. ``cache_dir`` holds the teacher cache (auxiliary
    tokens). ``context``: the ranks training together (default: this process alone); each draws
    its slice of every batch.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig

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
        self.edit = ParameterEdit(model, config.edit)
        self.edited = EditedModel(model, self.edit)
        self.forward_tokens = 0  # token positions pushed through the transformer by training steps

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
        """The frozen model's text condition of ``prompts`` (features ``[B, T, C]``, mask ``[B, T]``)."""
        return self.model.encode_text(list(prompts))

    def count_teacher_forced(self, batch: int) -> None:
        """Count one teacher-forced pass of ``batch`` rows (all ``L`` positions each)."""
        self.forward_tokens += batch * self.model.num_tokens

    def count_first_scale(self, batch: int) -> None:
        """Count one scale-0 pass of ``batch`` rows (one position each)."""
        self.count_confined(batch, 0)

    def count_confined(self, batch: int, last_scale: int) -> None:
        """Count one pass of ``batch`` rows over the positions of scales ``0..last_scale``."""
        self.forward_tokens += batch * self.model.confined_positions(last_scale)

    def edited_model(self) -> EditedModel:
        """The frozen model with this method's edit applied."""
        return self.edited

    def replace_edit(self, edit: ParameterEdit) -> None:
        """Continue with ``edit`` (same config and parameters) in place of :attr:`edit`, e.g. after training it sharded."""
        self.edit = edit
        self.edited = EditedModel(self.model, edit)


class AuxiliaryTokenEraser(Eraser):
    """Methods trained on the anchors' auxiliary tokens, generated once by the frozen model (VARE, S-VARE)."""

    def prepare(self) -> None:
        """Generate (or read back) the auxiliary tokens of every request in :meth:`aux_requests`."""
        self.cache = TeacherCache(self.model, self.config.aux_sampler(self.model), self.cache_dir)
        self.requests = self.aux_requests()
        self.cache.fill(self.requests, progress=self.progress)

    def batch(self, index: int) -> tuple[list[PromptPair], list[torch.Tensor], torch.Tensor]:
        """Step ``index``'s pairs, their auxiliary maps ``[B, h, w, d]`` per scale and teacher logits ``z^a`` ``[B, L, d, 2]``."""
        chosen = self.sample_indices(index, len(self.requests))
        per_pair = self.config.samples_per_pair
        pairs = [self.pairs[i // per_pair] for i in chosen]
        maps, teacher_logits = self.cache.batch([self.requests[i] for i in chosen])
        return pairs, maps, teacher_logits


class OwnGenerationEraser(AuxiliaryTokenEraser):
    """Methods trained on the frozen model's own generations ``r^u`` for the *target* prompts (naive, ESD).

    The same cache as §1's auxiliary tokens (same sampler and seeds), asked for targets, not anchors.
    """

    def aux_requests(self) -> list[tuple[str, int]]:
        """Every ``(target prompt, seed)`` whose generation training uses."""
        return self.seeded_requests([p.target for p in self.pairs])

    def generations(self, index: int) -> tuple[list[int], list[str], list[torch.Tensor]]:
        """Step ``index``'s request indices, their target prompts and maps ``[B, h, w, d]`` per scale."""
        chosen = self.sample_indices(index, len(self.requests))
        maps, _ = self.cache.batch([self.requests[i] for i in chosen])
        return chosen, [self.requests[i][0] for i in chosen], maps
