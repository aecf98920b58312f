"""Soft-prompt attack: the continuous upper bound of prompt attacks.

The text features of each target prompt (a ``TextCondition``'s ``features [B, T, C]``; the mask
stays) are optimised directly with Adam to minimise the attacked model's teacher-forced NLL of
the original model's concept tokens (:mod:`.whitebox`). No word sequence need produce the
optimised features, so its ASR bounds what any prompt could reach through the same objective.
The result's ``prompts`` are the target prompts the features started from.

Prompts are optimised independently (the loss is a sum over rows and Adam works element-wise),
so under ``torchrun`` each rank optimises its share of them, ``batch_size`` at a time, and the
features are gathered in order. A rank's batches hold other prompts than a single process's
would, so the optimised features agree with a single run's to float rounding, not bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from varerase.errors import ConfigError
from varerase.evaluation.attacks.base import Attack, Found
from varerase.evaluation.attacks.config import TargetPromptsConfig
from varerase.evaluation.attacks.targets import attacked_pairs, concept_pairs
from varerase.evaluation.attacks.whitebox import concept_tokens, token_nll
from varerase.models.base import SamplerConfig, ScaleWiseModel, TextCondition
from varerase.runtime.distributed import DistributedContext
from varerase.runtime.progress import progress_bar
from varerase.runtime.sharding import map_sharded


@dataclass
class SoftPromptConfig(TargetPromptsConfig):
    """``steps`` Adam steps at ``learning_rate`` on the features, ``batch_size`` prompts at a time."""

    steps: int = 100
    learning_rate: float = 1e-2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 0 or self.learning_rate <= 0:
            raise ConfigError(f"need steps ≥ 0 and learning_rate > 0, got {self.steps} and {self.learning_rate}")


def optimise_features(model: ScaleWiseModel, cond: TextCondition, maps: list[torch.Tensor], steps: int, learning_rate: float) -> TextCondition:
    """``cond`` with features optimised to minimise :func:`token_nll` of ``maps`` (same batch)."""
    features = cond.features.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([features], lr=learning_rate)
    for _ in range(steps):
        nll = token_nll(model, TextCondition(features, cond.mask), maps)
        # Rows are independent, so the sum gives each row its own gradient; autograd.grad leaves
        # the model's parameters without .grad.
        (features.grad,) = torch.autograd.grad(nll.sum(), features)
        optimiser.step()
    return TextCondition(features.detach(), cond.mask)


class SoftPromptAttack(Attack):
    """Optimises text features directly, then generates from them."""

    name = "soft-prompt"
    config_class = SoftPromptConfig
    config: SoftPromptConfig

    def search(self, model: ScaleWiseModel, concept: str, sampler: SamplerConfig, progress: bool, context: DistributedContext) -> Found:
        """Optimise each target prompt's features; under torchrun each rank optimises its share of the prompts."""
        config = self.config
        prompts = [p.target for p in attacked_pairs(concept_pairs(concept, config), config.num_prompts)]

        def optimise_prompts(indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
            rows = []
            with progress_bar(progress, transient=True) as bar:
                task = bar.add_task("soft-prompt optimisation", total=len(indices))
                for start in range(0, len(indices), config.batch_size):
                    batch = [prompts[i] for i in indices[start : start + config.batch_size]]
                    cond = model.encode_text(batch)
                    maps = concept_tokens(model, cond, sampler, config.seed)
                    optimised = optimise_features(model, cond, maps, config.steps, config.learning_rate)
                    with torch.no_grad():
                        before, after = token_nll(model, cond, maps), token_nll(model, optimised, maps)
                    for j, (prompt, b, a) in enumerate(zip(batch, before, after)):
                        rows.append((optimised.features[j], optimised.mask[j], {"target": prompt, "nll_start": float(b), "nll_end": float(a)}))
                    bar.advance(task, len(batch))
            return rows

        rows = map_sharded(optimise_prompts, len(prompts), context)
        condition = TextCondition.cat([TextCondition(features[None], mask[None]) for features, mask, _ in rows]).to(model.device)
        return Found(prompts, condition, {"searches": [search for _, _, search in rows]})
