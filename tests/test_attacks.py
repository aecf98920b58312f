"""Attacks: concept direction, genetic search, ASR, paraphrase sets, and each attack end to end on a tiny model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from conftest import FunctionDetector
from varerase.data.world import SYNONYMS, named_concepts, parse_attributes
from varerase.edits.delta import EditConfig, ParameterEdit
from varerase.edits.edited_model import EditedModel
from varerase.errors import ConfigError
from varerase.evaluation.attacks import ATTACKS, attack_success_rate, run_attack
from varerase.evaluation.attacks.paraphrase import DESCRIPTIONS, builtin_paraphrases
from varerase.evaluation.attacks.ring_a_bell import GeneticConfig, concept_direction, genetic_search
from varerase.evaluation.attacks.soft_prompt import optimise_features
from varerase.evaluation.attacks.text_features import pooled_embeddings, pooled_features
from varerase.evaluation.attacks.unlearndiff import UnlearnDiffAttack
from varerase.evaluation.attacks.vocabulary import names_concept
from varerase.evaluation.attacks.whitebox import concept_tokens, token_nll
from varerase.models.base import SamplerConfig, TextCondition

SAMPLER = SamplerConfig(cfg=1.0)


def red_channel_detector() -> FunctionDetector:
    """Scores every world concept by the image's mean red channel (enough to exercise ASR plumbing)."""
    return FunctionDetector(lambda images: images[:, 0].mean(dim=(1, 2)))


def _scale0_colour_decoder(maps):
    """Fake VAE: an 8×8 image coloured by the first three bits of the scale-0 token."""
    return maps[0][:, 0, 0, :3].float()[:, :, None, None].expand(-1, 3, 8, 8).clone()


@pytest.fixture
def decoding_model(tiny_text_model, monkeypatch):
    monkeypatch.setattr(tiny_text_model, "decode", _scale0_colour_decoder)
    return tiny_text_model


def _edited(model, seed: int = 1) -> EditedModel:
    edit = ParameterEdit(model, EditConfig(groups=["cross_attn"]))
    generator = torch.Generator().manual_seed(seed)
    for delta in edit.deltas.values():
        delta.data = 0.2 * torch.randn(delta.shape, generator=generator)
    return EditedModel(model, edit.requires_grad_(False))


def test_concept_direction_equals_difference_of_mean_pooled_embeddings():
    vectors = {"with a": [1.0, 0.0, 2.0], "with b": [3.0, 2.0, 0.0], "without": [0.0, 1.0, 1.0]}

    def encode(prompts):
        # Two real tokens whose mean is the prompt's vector, then a padding token full of garbage.
        features = torch.stack([torch.tensor([vectors[p], vectors[p], [99.0, 99.0, 99.0]]) for p in prompts])
        features[:, 0] += 1.0
        features[:, 1] -= 1.0
        return TextCondition(features, torch.tensor([[True, True, False]] * len(prompts)))

    direction = concept_direction(encode, ["with a", "with b"], ["without"])
    assert torch.allclose(direction, torch.tensor([2.0, 0.0, 0.0]))
    assert torch.allclose(pooled_features(encode(["without"])), torch.tensor([[0.0, 1.0, 1.0]]))


def test_genetic_search_best_objective_never_decreases_and_beats_initial_population():
    target = np.array([3, 1, 4, 1, 5, 9])

    def matches(population):
        return (population == target).sum(1).astype(float)

    config = GeneticConfig(population=16, generations=25, mutation_rate=0.15, elite=2, seed=7)
    trace = genetic_search(matches, vocab_size=10, length=len(target), config=config)
    assert len(trace.history) == config.generations + 1
    assert all(b >= a for a, b in zip(trace.history, trace.history[1:]))
    assert trace.history[-1] > trace.history[0]
    assert trace.best_score == trace.history[-1] == matches(np.array([trace.best]))[0]
    assert genetic_search(matches, 10, len(target), config).history == trace.history  # fixed seed, same search


def test_pooled_embeddings_of_search_candidates_are_not_cached(tiny_text_model):
    words = ["red", "a blue star", "dotted"]
    pooled = pooled_embeddings(tiny_text_model, words, chunk=2)
    assert pooled.shape == (3, tiny_text_model.encode_text(["x"]).features.shape[-1])
    assert set(tiny_text_model._text_cache) == {"x"}  # the candidates left nothing behind
    assert torch.allclose(pooled, pooled_features(tiny_text_model.encode_text(words)), atol=1e-5)


def test_attack_success_rate_is_the_fraction_of_prompts_detected():
    assert attack_success_rate([True, False, True, True]) == 0.75
    assert attack_success_rate([False]) == 0.0
    with pytest.raises(ValueError, match="empty"):
        attack_success_rate([])


@pytest.mark.parametrize("concept", [c for c in SYNONYMS if c != "unstyled"])
def test_paraphrase_sets_name_every_world_concept_only_through_other_words(concept):
    prompts = builtin_paraphrases(concept)
    assert len(prompts) >= 5
    assert not any(re.search(rf"\b{concept}\b", p) for p in prompts)
    # Descriptions avoid every caption word for the concept, so the caption parser misses it …
    assert all(concept not in named_concepts(d) for d in DESCRIPTIONS[concept])
    # … while the synonym prompts use caption words it knows.
    for prompt in prompts[: len(prompts) - len(DESCRIPTIONS[concept])]:
        assert concept in parse_attributes(prompt).values()


def test_run_attack_rejects_unknown_names_and_settings(tiny_text_model, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'ring-a-bell'"):
        run_attack("ring_a_bel", tiny_text_model, "circle", red_channel_detector(), SAMPLER, tmp_path)
    with pytest.raises(ConfigError, match="unknown setting"):
        run_attack("paraphrase", tiny_text_model, "circle", red_channel_detector(), SAMPLER, tmp_path, config={"stepz": 1})


SMALL_CONFIGS = {
    "paraphrase": {},
    "ring-a-bell": {"num_prompts": 2, "prompt_length": 4, "search": {"population": 6, "generations": 2, "elite": 1}},
    "unlearndiff": {"num_prompts": 2, "prefix_length": 2, "steps": 2, "candidates": 3},
    "soft-prompt": {"num_prompts": 2, "steps": 2},
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_runs_on_an_edited_model_and_writes_its_result(name, decoding_model, tmp_path):
    model = _edited(decoding_model)
    result = run_attack(name, model, "disc", red_channel_detector(), SAMPLER, tmp_path, SMALL_CONFIGS[name], progress=False)
    assert len(result.prompts) == len(result.detected) == len(result.scores) == result.images.shape[0]
    assert result.asr == attack_success_rate(result.detected)
    assert result.detected == [s >= 0.5 for s in result.scores]
    saved = json.loads((tmp_path / "attack.json").read_text())
    assert saved["asr"] == result.asr and saved["settings"]["concept"] == "circle"
    assert (tmp_path / "attack_images.png").exists()
    if name in ("ring-a-bell", "unlearndiff"):  # searched words never name the concept itself
        searched = [p.split()[: SMALL_CONFIGS[name].get("prefix_length", 4)] for p in result.prompts]
        assert not any(names_concept(w, "circle") for words in searched for w in words)


def test_unlearndiff_search_only_accepts_swaps_that_lower_the_nll(decoding_model):
    attack = UnlearnDiffAttack({"num_prompts": 2, "prefix_length": 2, "steps": 3, "candidates": 4})
    result = attack.run(_edited(decoding_model), "circle", red_channel_detector(), SAMPLER, progress=False)
    for search in result.settings["searches"]:
        assert all(b < a for a, b in zip(search["history"], search["history"][1:]))


def test_soft_prompt_lowers_the_nll_of_the_original_models_concept_tokens(tiny_text_model):
    model = _edited(tiny_text_model)
    cond = model.encode_text(["a red circle", "a blue disc on a striped background"])
    maps = concept_tokens(model, cond, SAMPLER, seed=0)
    optimised = optimise_features(model, cond, maps, steps=5, learning_rate=0.05)
    with torch.no_grad():
        before, after = token_nll(model, cond, maps), token_nll(model, optimised, maps)
    assert (after < before).all()
    assert all(p.grad is None for p in model.parameters())  # the attack never trains the model
