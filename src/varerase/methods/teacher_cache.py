"""Auxiliary visual tokens (METHODS.md §1): the frozen model's own generations, cached on disk.

For a prompt the frozen model generates token maps ``r`` (the *auxiliary visual tokens*) and we
keep, with them, the CFG-combined logits ``z_γ`` it sampled them from. Entries are safetensors
files keyed by model fingerprint, prompt, seed and sampler settings, so a second run (or a
resumed one) reuses them instead of generating again. Under ``torchrun`` the ranks share the
generation work (:meth:`TeacherCache.fill`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file

from varerase.io import atomic_save_safetensors
from varerase.models.base import SamplerConfig, ScaleWiseModel
from varerase.runtime.distributed import DistributedContext
from varerase.runtime.progress import progress_bar


@dataclass
class TeacherSample:
    """One cached generation: ``maps`` per scale (``[h, w, d]`` or ``[h, w]``) and ``logits`` ``[L, …]`` (``z_γ``)."""

    maps: list[torch.Tensor]
    logits: torch.Tensor


class TeacherCache:
    """Generates and stores the frozen model's tokens for prompts (one sample per prompt and seed).

    ``directory=None`` keeps entries in memory only.
    """

    def __init__(self, model: ScaleWiseModel, sampler: SamplerConfig, directory: str | Path | None = None) -> None:
        self.model = model
        self.sampler = sampler
        self.directory = Path(directory) if directory is not None else None
        self._fingerprint = model.fingerprint()
        self._memory: dict[str, TeacherSample] = {}
        self.generated = 0  # entries this object had to generate (not read back)

    def key(self, prompt: str, seed: int) -> str:
        """The cache key of ``(model, prompt, seed, sampler)``."""
        payload = json.dumps([self._fingerprint, prompt, seed, asdict(self.sampler)], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def _path(self, key: str) -> Path | None:
        return self.directory / f"{key}.safetensors" if self.directory is not None else None

    def get(self, prompt: str, seed: int) -> TeacherSample:
        """The cached sample for ``(prompt, seed)``, generating it if needed."""
        key = self.key(prompt, seed)
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if path is not None and path.exists():
            tensors = load_file(path)
            num_scales = len(self.model.schedule)
            sample = TeacherSample([tensors[f"map_{k}"] for k in range(num_scales)], tensors["logits"])
        else:
            with torch.no_grad():
                gen = self.model.generate(self.model.encode_text([prompt]), self.sampler, seed=seed, decode=False)
            sample = TeacherSample([m[0].cpu() for m in gen.maps], gen.all_logits()[0].float().cpu())
            self.generated += 1
            if path is not None:
                tensors = {f"map_{k}": m for k, m in enumerate(sample.maps)} | {"logits": sample.logits}
                atomic_save_safetensors(tensors, path, metadata={"prompt": prompt, "seed": str(seed)})
        self._memory[key] = sample
        return sample

    def fill(
        self,
        requests: Sequence[tuple[str, int]],
        progress: bool = True,
        description: str = "auxiliary tokens",
        context: DistributedContext | None = None,
    ) -> None:
        """Make sure every ``(prompt, seed)`` is cached, with a progress bar.

        With several ranks (``context``, default: the process group joined, if any) this is
        collective: every rank calls it with the same requests, generates its share, and ends
        holding every entry (see :meth:`_share`).
        """
        context = context or DistributedContext.current()
        unique = list(dict.fromkeys(requests))
        mine = context.shard(unique)
        with progress_bar(progress and context.is_main, transient=True) as bar:
            task = bar.add_task(description, total=len(mine))
            for prompt, seed in mine:
                self.get(prompt, seed)
                bar.advance(task)
        if context.is_distributed:
            self._share(unique, context)

    def _share(self, requests: list[tuple[str, int]], context: DistributedContext) -> None:
        """After each rank generated its share of ``requests``: load every entry on every rank.

        With a directory, the ranks' files are read back after a barrier (the directory must be
        one all ranks see; where it is not, :meth:`get` regenerates what is missing). Without one,
        the entries themselves are exchanged.
        """
        if self.directory is None:
            for entries in context.all_gather_objects(self._memory):
                self._memory.update(entries)
        else:
            context.barrier()
        for prompt, seed in requests:
            self.get(prompt, seed)

    def batch(self, requests: Sequence[tuple[str, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Stack samples: maps per scale ``[B, h, w, …]`` and logits ``[B, L, …]`` on the model's device."""
        samples = [self.get(p, s) for p, s in requests]
        device = self.model.device
        maps = [torch.stack([s.maps[k] for s in samples]).to(device) for k in range(len(self.model.schedule))]
        return maps, torch.stack([s.logits for s in samples]).to(device)
