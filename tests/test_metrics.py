"""Evaluation measures, prompt sets and ``evaluate`` on hand-made inputs and a fake model."""

from __future__ import annotations

import json

import pytest
import torch

from varerase.errors import ConfigError, DataError
from varerase.evaluation.detectors.base import ConceptDetector
from varerase.evaluation.detectors.world_detector import WorldDetector, WorldDetectorConfig
from varerase.evaluation.evaluate import evaluate, row_seeds
from varerase.evaluation.metrics import (
    FeatureDistances,
    attribute_hits,
    erasure,
    feature_diversity,
    presence_fractions,
    prompt_following,
)
from varerase.evaluation.prompts import EvalPrompt, group_prompts, load_prompt_csv, world_prompt_groups
from varerase.models.base import Generation, SamplerConfig, TextCondition


class FakeModel:
    """Just what ``evaluate`` calls: 8×8 images, red for prompts naming a circle (unless
    ``erased``), blue otherwise, plus seed-dependent noise; each row depends only on its seed."""

    def __init__(self, erased: bool = False) -> None:
        self.erased = erased
        self.device = torch.device("cpu")
        self.seeds: list[int] = []

    def fingerprint(self) -> str:
        return "fake-erased" if self.erased else "fake-original"

    def encode_text(self, prompts: list[str]) -> TextCondition:
        red = torch.tensor([float("circle" in p and not self.erased) for p in prompts])
        return TextCondition(red[:, None, None], torch.ones(len(prompts), 1, dtype=torch.bool))

    def generate(self, cond: TextCondition, sampler: SamplerConfig, seed: list[int], decode: bool = True) -> Generation:
        images = []
        for i, s in enumerate(seed):
            noise = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(s)) * 0.2
            colour = torch.tensor([0.8, 0.1, 0.1] if cond.features[i, 0, 0] > 0 else [0.1, 0.1, 0.8])
            images.append((colour[:, None, None] + noise).clamp(0, 1))
        self.seeds += list(seed)
        return Generation(maps=[], logits=[], images=torch.stack(images))


class FakeDetector(ConceptDetector):
    """Scores "circle" by the red channel and "blue" by the blue one; features are channel stats."""

    name = "fake"

    @property
    def concepts(self) -> tuple[str, ...]:
        return ("circle", "blue")

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"circle": images[:, 0].mean((1, 2)), "blue": images[:, 2].mean((1, 2))}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], dim=1)

    def weights_hash(self) -> str:
        return "0" * 64


def _images(colours: list[list[float]]) -> torch.Tensor:
    return torch.tensor(colours)[:, :, None, None].expand(-1, 3, 4, 4).clone()


def test_presence_fractions_are_the_fraction_of_images_where_the_detector_fires():
    images = _images([[0.9, 0, 0], [0.2, 0, 0.9], [0.7, 0, 0.6], [0.1, 0, 0.1]])
    assert presence_fractions(FakeDetector().detect(images)) == {"circle": 0.5, "blue": 0.5}


def test_erasure_reports_both_presences_and_their_difference():
    result = erasure({"circle": 0.75, "blue": 0.5}, {"circle": 0.25, "blue": 0.5})
    assert result["circle"] == {"before": 0.75, "after": 0.25, "erasure": 0.5}
    assert result["blue"]["erasure"] == 0.0


def test_fid_and_kid_are_near_zero_for_identical_sets_and_grow_with_a_shift():
    features = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    same, shifted = (FeatureDistances(FakeDetector(), kid_subsets=10, kid_subset_size=30) for _ in range(2))
    for d, other in ((same, features), (shifted, features + 1.0)):
        d.update_features(features, real=True)
        d.update_features(other, real=False)
    same, shifted = same.compute(), shifted.compute()
    assert abs(same["fid"]) < 1e-6 and shifted["fid"] == pytest.approx(8.0, rel=1e-4)  # |Δμ|² = 8 · 1²
    assert abs(same["kid_mean"]) < 0.1 * shifted["kid_mean"]
    assert same["num_real"] == same["num_fake"] == 60 and same["feature_dim"] == 8


def test_feature_distances_extract_features_from_images_with_the_embedder():
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    d = FeatureDistances(FakeDetector(), kid_subsets=5)
    d.update(images, real=True)
    d.update(images, real=False)
    result = d.compute()
    assert result["feature_dim"] == 6 and abs(result["fid"]) < 1e-6
    with pytest.raises(ValueError, match="at least 2"):
        FeatureDistances(FakeDetector()).compute()


def test_feature_diversity_is_the_mean_pairwise_distance():
    assert feature_diversity(torch.zeros(4, 3)) == 0.0
    assert feature_diversity(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    assert feature_diversity(torch.zeros(1, 3)) == 0.0


class _FixedPredictions(WorldDetector):
    """Predicts a red circle on a plain background for every image."""

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {kind: torch.zeros(len(images), dtype=torch.long) for kind in ("shape", "colour", "background")}


def test_prompt_following_needs_every_named_attribute_and_skips_unnamed_kinds():
    prompts = ["a red circle on a plain background", "a blue circle", "a red star", "something else"]
    hits = attribute_hits(_FixedPredictions(), torch.zeros(4, 3, 32, 32), prompts)
    assert hits == [{"shape": True, "colour": True, "background": True}, {"shape": True, "colour": False}, {"shape": False, "colour": True}, {}]
    result = prompt_following(hits)
    assert result["accuracy"] == pytest.approx(1 / 3) and result["num_images"] == 3
    assert result["background"] == 1.0 and result["shape"] == pytest.approx(2 / 3)


def test_only_detectors_that_judge_attributes_give_prompt_following():
    assert FakeDetector().attribute_hits(torch.zeros(1, 3, 4, 4), ["a red circle"]) is None
    with pytest.raises(ConfigError, match="cannot judge prompt following"):
        attribute_hits(FakeDetector(), torch.zeros(1, 3, 4, 4), ["a red circle"])
    assert _FixedPredictions().attribute_hits(torch.zeros(1, 3, 32, 32), ["a red star"]) == [{"shape": False, "colour": True}]


def test_world_detector_embed_gives_penultimate_features():
    detector = WorldDetector(WorldDetectorConfig(widths=(8, 8), hidden=16))
    features = detector.embed(torch.rand(3, 3, 20, 20))
    assert features.shape == (3, 16)


# ---------------------------------------------------------------------------------------------
# Prompt sets


def test_world_prompt_groups_are_deterministic_and_name_the_concept_only_in_targets():
    groups = world_prompt_groups(["disc"], max_per_group=10)
    assert groups == world_prompt_groups(["circle"], max_per_group=10)
    assert set(groups) == {"target", "anchor", "retain", "heldout"} and all(len(g) == 10 for g in groups.values())
    assert all("circle" in p.prompt and p.group == "target" for p in groups["target"])
    assert not any("circle" in p.prompt for g in ("anchor", "retain") for p in groups[g])


def test_prompt_csv_loaders_read_i2p_six_cd_and_coco(tmp_path):
    i2p = tmp_path / "i2p.csv"
    i2p.write_text('\ufeffprompt,categories,evaluation_seed,evaluation_guidance\n"a, b",sexual,12,7\nc,"hate, violence",3.0,7\n')
    assert load_prompt_csv(i2p) == [EvalPrompt("a, b", 12, "i2p"), EvalPrompt("c", 3, "i2p")]
    assert load_prompt_csv(i2p, categories=["violence"], group="v") == [EvalPrompt("c", 3, "v")]
    six = tmp_path / "six.csv"
    six.write_text("prompt,seed,concept\nx,,nudity\ny,5,church\n")
    assert group_prompts(load_prompt_csv(six)) == {"nudity": [EvalPrompt("x", None, "nudity")], "church": [EvalPrompt("y", 5, "church")]}
    coco = tmp_path / "coco.csv"
    coco.write_text("image_id,caption\n1,a dog\n2,a cat\n")
    assert load_prompt_csv(coco, limit=1) == [EvalPrompt("a dog", None, "coco")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("text,seed\na,1\n", "line 1: no 'prompt' or 'caption'"),
        ("prompt,seed\na,1\n\"multi\nline\",x\n", "line 3: seed 'x' is not a number"),
        ("prompt,seed\na,1\n ,2\n", "line 3: empty 'prompt'"),
        ("prompt,seed\na,-1\n", "line 2: seed '-1' must be a non-negative integer"),
        ("prompt\na,b\n", "line 2: more fields"),
    ],
)
def test_malformed_prompt_files_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        load_prompt_csv(path)
    assert str(path) in str(error.value)


# ---------------------------------------------------------------------------------------------
# evaluate()


def _groups() -> dict[str, list[EvalPrompt]]:
    return {
        "target": [EvalPrompt("a red circle"), EvalPrompt("a circle, seeded", seed=100)],
        "retain": [EvalPrompt("a blue square"), EvalPrompt("a star"), EvalPrompt("a heart")],
    }


def run_fake_evaluation(out_dir, reference: bool, batch_size: int = 2) -> dict:
    """The run ``test_report`` builds reports from."""
    return evaluate(
        FakeModel(erased=reference),
        _groups(),
        FakeDetector(),
        SamplerConfig(cfg=4.0, top_k=3),
        samples_per_prompt=2,
        batch_size=batch_size,
        base_seed=7,
        out_dir=out_dir,
        concepts=["circle"],
        reference_model=FakeModel() if reference else None,
        progress=False,
    )


def test_row_seeds_use_the_prompt_seed_or_the_base_seed_per_sample():
    prompts = [EvalPrompt("a"), EvalPrompt("b", seed=50), EvalPrompt("c")]
    assert row_seeds(prompts, 2, 10) == [("a", 10), ("a", 11), ("b", 50), ("b", 51), ("c", 14), ("c", 15)]


def test_evaluate_writes_every_figure_and_setting_into_metrics_json(tmp_path):
    result = run_fake_evaluation(tmp_path, reference=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    settings = saved["settings"]
    assert settings["model_fingerprint"] == "fake-original" and settings["reference_fingerprint"] is None
    assert settings["detector"] == FakeDetector().describe() and settings["threshold"] == 0.5
    assert settings["sampler"] == {"cfg": 4.0, "temperature": 1.0, "top_k": 3, "top_p": 0.0} and settings["cfg"] == 4.0
    assert (settings["samples_per_prompt"], settings["batch_size"], settings["base_seed"]) == (2, 2, 7)
    for key in ("varerase_version", "torch_version", "date", "seed_rule", "feature_space"):
        assert settings[key]
    groups = saved["model"]["groups"]
    assert groups["target"]["presence"] == {"circle": 1.0} and groups["retain"]["presence"] == {"circle": 0.0}
    assert [r["seed"] for r in groups["target"]["rows"]] == [7, 8, 100, 101]
    assert groups["target"]["rows"][0]["detected"] == ["circle"] and groups["retain"]["num_images"] == 6
    assert groups["retain"]["feature_diversity"] > 0
    assert (tmp_path / groups["target"]["grid"]).is_file()


def test_evaluate_results_do_not_depend_on_the_batch_size(tmp_path):
    a = run_fake_evaluation(tmp_path / "a", reference=False, batch_size=1)["model"]["groups"]
    b = run_fake_evaluation(tmp_path / "b", reference=False, batch_size=4)["model"]["groups"]
    assert [g["rows"] for g in a.values()] == [g["rows"] for g in b.values()]


def test_evaluate_with_a_reference_model_reports_erasure_and_distances(tmp_path):
    result = run_fake_evaluation(tmp_path, reference=True)
    assert result["before"]["fingerprint"] == "fake-original" and result["after"]["fingerprint"] == "fake-erased"
    target = result["comparison"]["target"]
    assert target["erasure"]["circle"] == {"before": 1.0, "after": 0.0, "erasure": 1.0}
    assert target["distances"]["fid"] == pytest.approx(2 * 0.7**2, rel=0.05)  # red → blue: two channel means move 0.7
    assert abs(result["comparison"]["retain"]["distances"]["fid"]) < 1e-6  # same seeds, same images
    assert result["comparison"]["all groups"]["distances"]["num_real"] == 10
    assert "torchmetrics" in result["settings"]["fid_kid"]["implementation"]


def test_evaluate_measures_prompt_following_with_the_world_detector(tmp_path):
    torch.manual_seed(0)
    detector = WorldDetector(WorldDetectorConfig(widths=(8,), hidden=8))
    groups = world_prompt_groups(["circle"], max_per_group=2)
    result = evaluate(FakeModel(), groups, detector, SamplerConfig(), 1, 4, 0, tmp_path, ["circle", "red"], progress=False)
    following = result["model"]["groups"]["retain"]["prompt_following"]
    assert following["num_images"] == 2 and 0.0 <= following["accuracy"] <= 1.0


def test_evaluate_rejects_concepts_the_detector_does_not_know(tmp_path):
    with pytest.raises(ConfigError, match="known: circle, blue"):
        evaluate(FakeModel(), _groups(), FakeDetector(), SamplerConfig(), 1, 2, 0, tmp_path, ["nudity"], progress=False)
