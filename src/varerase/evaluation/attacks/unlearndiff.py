"""UnlearnDiff-style attack (Zhang et al., 2024), adapted to scale-wise models: white-box,
discrete prompt optimisation.

For each target prompt ``c_u``, ``prefix_length`` words from the vocabulary (:mod:`.vocabulary`)
are prepended to it, as UnlearnDiff prepends adversarial tokens, and chosen to minimise the
attacked model's teacher-forced NLL of the original model's concept tokens (:mod:`.whitebox`).

Each step is a HotFlip-style swap: the gradient ``g = ∂NLL/∂features`` summed over the prompt's
real tokens (``ḡ [C]``, the effect of shifting every token feature alike) ranks every swap
"prefix position ``p`` → word ``w``" by its first-order change ``(e_w − e_{w_p})·ḡ``, where ``e``
is a word's pooled embedding. The ``candidates`` best-ranked swaps are then evaluated exactly and
the best is taken if it lowers the NLL; the search stops early when none does. Ranking through
pooled embeddings is our choice: it works for any text encoder, whatever its sub-word tokens.

The searches of different target prompts are independent, so under ``torchrun`` the ranks share
them out; a rank draws the concept tokens of its own targets (every row has its own generator, so
they are a single process's). The vocabulary's embeddings are computed on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from varerase.errors import ConfigError
from varerase.evaluation.attacks.base import Attack, Found
from varerase.evaluation.attacks.targets import attacked_pairs, concept_pairs
from varerase.evaluation.attacks.text_features import pooled_embeddings
from varerase.evaluation.attacks.vocabulary import VocabularyConfig, attack_vocabulary
from varerase.evaluation.attacks.whitebox import concept_tokens, token_nll
from varerase.models.base import SamplerConfig, ScaleWiseModel, TextCondition
from varerase.runtime.distributed import DistributedContext
from varerase.runtime.progress import progress_bar
from varerase.runtime.sharding import map_sharded


@dataclass
class UnlearnDiffConfig(VocabularyConfig):
    """``prefix_length``: adversarial words before each target prompt; ``steps``: at most this
    many accepted swaps; ``candidates``: swaps evaluated exactly per step."""

    prefix_length: int = 5
    steps: int = 20
    candidates: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prefix_length < 1 or self.steps < 0 or self.candidates < 1:
            raise ConfigError(
                f"need prefix_length ≥ 1, steps ≥ 0, candidates ≥ 1; got {self.prefix_length}, {self.steps}, {self.candidates}"
            )


@dataclass
class HotFlipSearch:
    """The words and concept tokens one prefix search works with.

    ``embeddings``: pooled embedding of every vocabulary word, ``[V, C]``; ``maps``: the original
    model's concept tokens for ``suffix`` (batch 1).
    """

    model: ScaleWiseModel
    vocabulary: list[str]
    embeddings: torch.Tensor
    suffix: str
    maps: list[torch.Tensor]

    def prompt(self, prefix: Sequence[int]) -> str:
        return " ".join([self.vocabulary[i] for i in prefix] + [self.suffix])

    def nll(self, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        """Exact NLL of each prefix's prompt: ``[N]``."""
        with torch.no_grad():
            return token_nll(self.model, self.model.encode_text([self.prompt(p) for p in prefixes], cache=False), self.maps)

    def ranked_swaps(self, prefix: list[int], count: int) -> list[list[int]]:
        """The ``count`` single-word swaps of ``prefix`` with the lowest first-order NLL estimate."""
        cond = self.model.encode_text([self.prompt(prefix)], cache=False)
        features = cond.features.clone().requires_grad_(True)
        # autograd.grad rather than backward: the model's own parameters get no .grad.
        (grad,) = torch.autograd.grad(token_nll(self.model, TextCondition(features, cond.mask), self.maps).sum(), features)
        pooled_grad = (grad * cond.mask.unsqueeze(-1)).sum(1)[0]  # [C]
        gain = self.embeddings @ pooled_grad  # [V]
        current = torch.tensor(prefix, device=gain.device)
        estimate = gain[None, :] - gain[current][:, None]  # [P, V]
        estimate[torch.arange(len(prefix)), current] = float("inf")  # swapping a word for itself changes nothing
        swaps = []
        for flat in estimate.flatten().argsort()[:count].tolist():
            position, word = divmod(flat, len(self.vocabulary))
            swaps.append(prefix[:position] + [word] + prefix[position + 1 :])
        return swaps

    def run(self, prefix: list[int], steps: int, candidates: int) -> tuple[list[int], list[float]]:
        """Greedy swaps from ``prefix``; returns the final prefix and the NLL before and after each accepted swap."""
        history = [float(self.nll([prefix])[0])]
        for _ in range(steps):
            swaps = self.ranked_swaps(prefix, candidates)
            nlls = self.nll(swaps)
            best = int(nlls.argmin())
            if float(nlls[best]) >= history[-1]:
                break  # a local optimum of single swaps
            prefix = swaps[best]
            history.append(float(nlls[best]))
        return prefix, history


class UnlearnDiffAttack(Attack):
    """Gradient-guided discrete prefix search that maximises the likelihood of the original model's concept tokens."""

    name = "unlearndiff"
    config_class = UnlearnDiffConfig
    config: UnlearnDiffConfig

    def search(self, model: ScaleWiseModel, concept: str, sampler: SamplerConfig, progress: bool, context: DistributedContext) -> Found:
        """One prefix search per target prompt; under torchrun each rank runs its share of the targets."""
        config = self.config
        pairs = concept_pairs(concept, config)
        vocabulary = attack_vocabulary(concept, pairs, config)
        embeddings = pooled_embeddings(model, vocabulary)
        targets = attacked_pairs(pairs, config.num_prompts)

        def search_targets(indices: list[int]) -> list[dict]:
            maps = concept_tokens(model, model.encode_text([targets[i].target for i in indices]), sampler, config.seed)
            searches = []
            with progress_bar(progress, transient=True) as bar:
                task = bar.add_task("unlearndiff search", total=len(indices))
                for row, i in enumerate(indices):
                    search = HotFlipSearch(model, vocabulary, embeddings, targets[i].target, [m[row : row + 1] for m in maps])
                    start = np.random.default_rng([config.seed, i]).integers(len(vocabulary), size=config.prefix_length).tolist()
                    prefix, history = search.run(start, config.steps, config.candidates)
                    prompt = search.prompt(prefix)
                    searches.append({"target": targets[i].target, "prompt": prompt, "nll_start": history[0], "nll_end": history[-1], "history": history})
                    bar.advance(task)
            return searches

        searches = map_sharded(search_targets, len(targets), context)
        prompts = [s["prompt"] for s in searches]
        details = {"vocabulary_size": len(vocabulary), "searches": searches}
        return Found(prompts, model.encode_text(prompts), details)
