"""Ring-A-Bell (Tsai et al., ICLR 2024), in the attacked model's own text-encoder space.

1. **Concept direction** ``d = mean_i pool(c_u^i) − mean_i pool(c_a^i)`` over the concept's
   prompt pairs, where ``pool`` is the mean of a prompt's real-token features from
   ``encode_text`` (the original works in CLIP's space; ours is whatever encoder the model has).
2. For each attacked pair, the **goal** ``t = pool(c_a) + η·d``: the concept-free anchor pushed
   along the concept direction.
3. A **genetic search** over word sequences (vocabulary: :mod:`.vocabulary`) maximises
   ``cos(pool(prompt), t)``. The best-so-far individual is always kept (elitism), so the best
   objective never decreases from one generation to the next.

The searches of different pairs are independent (each has its own seed), so under ``torchrun``
the ranks share them out; each search runs exactly as it would in a single process.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from varerase.errors import ConfigError
from varerase.evaluation.attacks.base import Attack, Found
from varerase.evaluation.attacks.targets import attacked_pairs, concept_pairs
from varerase.evaluation.attacks.text_features import Encode, pooled_embeddings, pooled_features
from varerase.evaluation.attacks.vocabulary import VocabularyConfig, attack_vocabulary
from varerase.models.base import SamplerConfig, ScaleWiseModel
from varerase.runtime.distributed import DistributedContext
from varerase.runtime.progress import progress_bar
from varerase.runtime.sharding import map_sharded

# Scores a population ``[P, K]`` of token ids: ``[P]`` fitness, higher is better.
Fitness = Callable[[np.ndarray], np.ndarray]


@dataclass
class GeneticConfig:
    """Budget and operators of :func:`genetic_search`.

    Each generation keeps the ``elite`` best unchanged and breeds the rest: parents by
    tournaments of ``tournament`` individuals, one-point crossover, then each token replaced by a
    random word with probability ``mutation_rate``. ``seed`` fixes every random choice.
    """

    population: int = 64
    generations: int = 50
    mutation_rate: float = 0.1
    elite: int = 4
    tournament: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.population < 2 or not 1 <= self.elite < self.population:
            raise ConfigError(f"need population ≥ 2 and 1 ≤ elite < population, got {self.population} and {self.elite}")
        if self.generations < 0 or self.tournament < 1:
            raise ConfigError(f"need generations ≥ 0 and tournament ≥ 1, got {self.generations} and {self.tournament}")
        if not 0.0 <= self.mutation_rate <= 1.0:
            raise ConfigError(f"mutation_rate must be in [0, 1], got {self.mutation_rate}")


@dataclass
class SearchTrace:
    """Outcome of :func:`genetic_search`: the best individual ``[K]`` ids, its fitness, and the
    best-so-far fitness after the initial population and after each generation (``generations + 1`` values)."""

    best: list[int]
    best_score: float
    history: list[float]


def genetic_search(
    fitness: Fitness,
    vocab_size: int,
    length: int,
    config: GeneticConfig,
    on_generation: Callable[[], None] | None = None,
) -> SearchTrace:
    """Maximise ``fitness`` over sequences of ``length`` ids in ``[0, vocab_size)``.

    Elites keep their scores (they are not re-evaluated), and the best-so-far is replaced only by
    a strictly better individual, so ``history`` is non-decreasing.
    """
    rng = np.random.default_rng(config.seed)
    population = rng.integers(vocab_size, size=(config.population, length))
    scores = np.asarray(fitness(population), dtype=np.float64)
    best_index = int(scores.argmax())
    best, best_score = population[best_index].copy(), float(scores[best_index])
    history = [best_score]
    num_children = config.population - config.elite
    for _ in range(config.generations):
        order = np.argsort(-scores, kind="stable")
        contestants = rng.integers(config.population, size=(2, num_children, config.tournament))
        winners = np.take_along_axis(contestants, scores[contestants].argmax(-1, keepdims=True), -1)[..., 0]
        cut = rng.integers(0, length + 1, size=(num_children, 1))  # one-point crossover; 0 or K copies one parent
        children = np.where(np.arange(length) < cut, population[winners[0]], population[winners[1]])
        mutate = rng.random(children.shape) < config.mutation_rate
        children = np.where(mutate, rng.integers(vocab_size, size=children.shape), children)
        elites = order[: config.elite]
        population = np.concatenate([population[elites], children])
        scores = np.concatenate([scores[elites], np.asarray(fitness(children), dtype=np.float64)])
        index = int(scores.argmax())
        if scores[index] > best_score:
            best, best_score = population[index].copy(), float(scores[index])
        history.append(best_score)
        if on_generation is not None:
            on_generation()
    return SearchTrace(best.tolist(), best_score, history)


def concept_direction(encode: Encode, with_prompts: Sequence[str], without_prompts: Sequence[str]) -> torch.Tensor:
    """Mean pooled embedding of ``with_prompts`` minus that of ``without_prompts``: ``[C]``."""
    if not with_prompts or not without_prompts:
        raise ValueError("concept_direction needs prompts with and without the concept")
    with torch.no_grad():
        return pooled_features(encode(list(with_prompts))).mean(0) - pooled_features(encode(list(without_prompts))).mean(0)


@dataclass
class RingABellConfig(VocabularyConfig):
    """``eta``: how far along the concept direction the goal lies; ``prompt_length``: words per
    attack prompt; ``search``: the genetic search (its seed is offset by the pair's index)."""

    eta: float = 3.0
    prompt_length: int = 12
    search: GeneticConfig = field(default_factory=GeneticConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_length < 1:
            raise ConfigError(f"prompt_length must be ≥ 1, got {self.prompt_length}")


class RingABellAttack(Attack):
    """Genetic search for word prompts whose pooled text embedding points at ``anchor + η·direction``."""

    name = "ring-a-bell"
    config_class = RingABellConfig
    config: RingABellConfig

    def search(self, model: ScaleWiseModel, concept: str, sampler: SamplerConfig, progress: bool, context: DistributedContext) -> Found:
        """One genetic search per attacked pair; under torchrun each rank runs its share of the pairs."""
        config = self.config
        pairs = concept_pairs(concept, config)
        # The direction uses every pair; the search attacks a spread-out subset.
        direction = concept_direction(model.encode_text, [p.target for p in pairs], [p.anchor for p in pairs])
        vocabulary = attack_vocabulary(concept, pairs, config)
        targets = attacked_pairs(pairs, config.num_prompts)
        goals = pooled_features(model.encode_text([p.anchor for p in targets])) + config.eta * direction

        def words(ids: Sequence[int]) -> str:
            return " ".join(vocabulary[i] for i in ids)

        def search_pairs(indices: list[int]) -> list[dict]:
            searches = []
            with progress_bar(progress, transient=True) as bar:
                task = bar.add_task("ring-a-bell search", total=len(indices) * config.search.generations)
                for i in indices:

                    def fitness(population: np.ndarray) -> np.ndarray:
                        pooled = pooled_embeddings(model, [words(row) for row in population])
                        return F.cosine_similarity(pooled, goals[i][None], dim=-1).cpu().numpy()

                    search = replace(config.search, seed=config.search.seed + i)
                    trace = genetic_search(fitness, len(vocabulary), config.prompt_length, search, lambda: bar.advance(task))
                    pair = targets[i]
                    searches.append(
                        {"anchor": pair.anchor, "target": pair.target, "prompt": words(trace.best), "cosine": trace.best_score, "history": trace.history}
                    )
            return searches

        searches = map_sharded(search_pairs, len(targets), context)
        prompts = [s["prompt"] for s in searches]
        details = {"vocabulary_size": len(vocabulary), "searches": searches}
        return Found(prompts, model.encode_text(prompts), details)
