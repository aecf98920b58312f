"""Evaluation measures, prompt sets and ``evaluate`` on hand-made inputs and a fake model."""

from __future__ import annotations

import json

import pytest
import torch

from varerase.data.concepts import paraphrase_concept_prompts
from varerase.data.world import PARAPHRASES
from varerase.data.world_rendering import WorldConfig
from varerase.errors import ConfigError, DataError
from varerase.evaluation.detectors.base import ConceptDetector
from varerase.evaluation.detectors.world_detector import WorldDetector, WorldDetectorConfig
from varerase.evaluation.evaluate import ReferenceImages, evaluate, row_seeds
from varerase.evaluation.ground_truth import GroundTruth, world_ground_truth
from varerase.evaluation.metrics import (
    FeatureDistances,
    attribute_hits,
    erasure,
    feature_diversity,
    presence_fractions,
    presence_intervals,
    prompt_following,
    rate_summary,
    wilson_interval,
)
from varerase.evaluation.paraphrases import ParaphraseFilterConfig, paraphrase_group
from varerase.evaluation.prompts import EvalPrompt, group_prompts, load_prompt_csv, world_prompt_groups
from varerase.models.base import Generation, SamplerConfig, TextCondition


class FakeModel:
    """Just what ``evaluate`` calls: 8×8 images, red for prompts naming a circle (unless
    ``erased``), blue otherwise, plus seed-dependent noise; each row depends only on its seed.
    ``circle_words``: the words it draws a circle for; ``half_words``: words it draws one for on even seeds only."""

    def __init__(self, erased: bool = False, circle_words: tuple[str, ...] = ("circle",), half_words: tuple[str, ...] = ()) -> None:
        self.erased = erased
        self.circle_words, self.half_words = circle_words, half_words
        self.device = torch.device("cpu")
        self.seeds: list[int] = []

    def fingerprint(self) -> str:
        return "fake-erased" if self.erased else "fake-original"

    def encode_text(self, prompts: list[str]) -> TextCondition:
        def kind(p: str) -> float:  # 1: always a circle, 2: on even seeds, 0: never
            return 0.0 if self.erased else 1.0 if any(w in p for w in self.circle_words) else 2.0 if any(w in p for w in self.half_words) else 0.0

        red = torch.tensor([kind(p) for p in prompts])
        return TextCondition(red[:, None, None], torch.ones(len(prompts), 1, dtype=torch.bool))

    def generate(self, cond: TextCondition, sampler: SamplerConfig, seed: list[int], decode: bool = True) -> Generation:
        images = []
        for i, s in enumerate(seed):
            noise = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(s)) * 0.2
            red = cond.features[i, 0, 0] == 1 or cond.features[i, 0, 0] == 2 and s % 2 == 0
            colour = torch.tensor([0.8, 0.1, 0.1] if red else [0.1, 0.1, 0.8])
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


def test_wilson_intervals_match_known_values():
    assert wilson_interval(0, 48) == pytest.approx((0.0, 3.8416 / (48 + 3.8416)))  # closed form at 0 successes
    assert wilson_interval(48, 48) == pytest.approx((48 / (48 + 3.8416), 1.0))
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(2, 48) == pytest.approx((0.0115, 0.1398), abs=1e-4)  # "4 %" on 48 images: about 1–14 %
    lo, hi = wilson_interval(9, 216)
    assert lo < 9 / 216 < hi and hi - lo < 0.06
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    assert rate_summary(0, 0) == {"rate": None, "count": 0, "n": 0, "ci95": None}


def test_presence_and_prompt_following_carry_counts_and_intervals():
    summary = presence_intervals({"circle": torch.tensor([True, False, False, False])})["circle"]
    assert summary == {"rate": 0.25, "count": 1, "n": 4, "ci95": list(wilson_interval(1, 4))}
    following = prompt_following([{"shape": True}, {"shape": False}, {}])
    assert (following["num_correct"], following["num_images"]) == (1, 2) and following["ci95"] == list(wilson_interval(1, 2))


def test_fid_is_flagged_unreliable_below_a_thousand_images_a_side():
    def distances(n: int) -> dict:
        d = FeatureDistances(FakeDetector(), kid_subsets=3, kid_subset_size=50)
        real, fake = (torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)) for seed in (0, 1))
        d.update_features(real, fake, [f"prompt {i % 100}" for i in range(n)])
        return d.compute()

    few, many = distances(999), distances(1000)
    assert not few["fid_reliable"] and many["fid_reliable"] and many["kid_subset_size"] == 50 and few["kid_std"] > 0
    assert many["num_prompts"] == 100


def test_presence_fractions_are_the_fraction_of_images_where_the_detector_fires():
    images = _images([[0.9, 0, 0], [0.2, 0, 0.9], [0.7, 0, 0.6], [0.1, 0, 0.1]])
    assert presence_fractions(FakeDetector().detect(images)) == {"circle": 0.5, "blue": 0.5}


def test_erasure_reports_both_presences_and_their_difference():
    result = erasure({"circle": 0.75, "blue": 0.5}, {"circle": 0.25, "blue": 0.5})
    assert result["circle"] == {"before": 0.75, "after": 0.25, "erasure": 0.5}
    assert result["blue"]["erasure"] == 0.0


def test_fid_and_kid_are_near_zero_for_identical_sets_and_grow_with_a_shift():
    features = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    prompts = [f"prompt {i // 3}" for i in range(60)]
    same, shifted = (FeatureDistances(FakeDetector(), kid_subsets=10, kid_subset_size=30) for _ in range(2))
    for d, other in ((same, features), (shifted, features + 1.0)):
        d.update_features(features, other, prompts)
    same, shifted = same.compute(), shifted.compute()
    assert abs(same["fid"]) < 1e-6 and shifted["fid"] == pytest.approx(8.0, rel=1e-4)  # |Δμ|² = 8 · 1²
    assert same["kid_mean"] == 0.0 and same["kid_std"] == 0.0 and shifted["kid_mean"] > 5 * shifted["kid_std"] > 0
    assert same["num_real"] == same["num_fake"] == 60 and same["feature_dim"] == 8 and same["num_prompts"] == 20


def test_kid_of_paired_rows_from_one_distribution_is_unbiased_where_the_unpaired_estimator_is_not():
    # 40 prompts × 4 samples; a prompt fixes most of an image's features, so rows of one prompt are alike.
    # Both sides are draws of the same distribution: the paired KID is zero within its standard error,
    # the estimator that keeps the matched (same-prompt) cross pairs, torchmetrics', is far below zero.
    from varerase.evaluation.metrics import _polynomial_kernel

    generator = torch.Generator().manual_seed(3)
    centres = 3 * torch.randn(40, 16, generator=generator).double()
    units = torch.arange(40).repeat_interleave(4)
    real, fake = (centres[units] + 0.3 * torch.randn(160, 16, generator=generator).double() for _ in range(2))
    d = FeatureDistances(FakeDetector(), kid_subsets=50, seed=0)
    d.update_features(real, fake, [str(int(u)) for u in units])
    paired = d.compute()
    assert abs(paired["kid_mean"]) < 2 * paired["kid_std"]
    k_rr, k_ff, k_rf = _polynomial_kernel(real, real), _polynomial_kernel(fake, fake), _polynomial_kernel(real, fake)
    n = len(real)
    unpaired = (k_rr.sum() - k_rr.diag().sum() + k_ff.sum() - k_ff.diag().sum()) / (n * (n - 1)) - 2 * k_rf.mean()
    assert unpaired < -5 * paired["kid_std"]


def test_feature_distances_extract_features_from_images_with_the_embedder():
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    d = FeatureDistances(FakeDetector(), kid_subsets=5)
    d.update(images, images, ["a", "a", "b", "b", "c", "c"])
    result = d.compute()
    assert result["feature_dim"] == 6 and abs(result["fid"]) < 1e-6 and result["kid_mean"] == 0.0
    assert result["kid_std"] is None  # fewer than 4 prompts: no halves to take a standard error from
    with pytest.raises(ValueError, match="at least 2"):
        FeatureDistances(FakeDetector()).compute()
    with pytest.raises(ValueError, match="paired rows"):
        d.update_features(torch.zeros(2, 6), torch.zeros(3, 6), ["a", "b"])


def test_feature_diversity_is_the_mean_pairwise_distance():
    assert feature_diversity(torch.zeros(4, 3)) == 0.0
    assert feature_diversity(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    assert feature_diversity(torch.zeros(1, 3)) == 0.0


class _FixedPredictions(WorldDetector):
    """Sees one red circle on a plain background, unstyled, in every image."""

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {kind: torch.zeros(len(images), dtype=torch.long) for kind in ("shape", "colour", "background", "style")}

    def predict_objects(self, images: torch.Tensor) -> list[list[tuple[str, str]]]:
        return [[("circle", "red")] for _ in images]


def test_prompt_following_needs_every_named_attribute_and_skips_unnamed_kinds():
    prompts = ["a red circle on a plain background", "a blue circle", "a red star", "a red circle, in sepia style", "something else"]
    hits = attribute_hits(_FixedPredictions(), torch.zeros(5, 3, 32, 32), prompts)
    assert hits == [
        {"shape": True, "colour": True, "background": True, "style": True},
        {"shape": True, "colour": False, "style": True},
        {"shape": False, "colour": True, "style": True},
        {"shape": True, "colour": True, "style": False},
        {},
    ]
    result = prompt_following(hits)
    assert result["accuracy"] == pytest.approx(1 / 4) and result["num_images"] == 4
    assert result["background"] == 1.0 and result["shape"] == pytest.approx(3 / 4) and result["style"] == pytest.approx(3 / 4)


def test_two_object_prompts_need_both_objects_with_their_own_colours():
    prompts = ["a red circle and a blue star on a plain background", "a blue circle and a red star on a plain background"]
    detector = _FixedPredictions()
    detector.predict_objects = lambda images: [[("star", "blue"), ("circle", "red")]] * len(images)
    first, swapped = attribute_hits(detector, torch.zeros(2, 3, 32, 32), prompts)
    assert first == {"shape": True, "colour": True, "objects": True, "background": True, "style": True}
    assert swapped["shape"] and swapped["colour"] and not swapped["objects"]  # right shapes and colours, wrong binding
    assert prompt_following([first, swapped])["objects"] == 0.5


def test_only_detectors_that_judge_attributes_give_prompt_following():
    assert FakeDetector().attribute_hits(torch.zeros(1, 3, 4, 4), ["a red circle"]) is None
    with pytest.raises(ConfigError, match="cannot judge prompt following"):
        attribute_hits(FakeDetector(), torch.zeros(1, 3, 4, 4), ["a red circle"])
    assert _FixedPredictions().attribute_hits(torch.zeros(1, 3, 32, 32), ["a red star"]) == [{"shape": False, "colour": True, "style": True}]


def test_world_detector_embed_gives_penultimate_features():
    detector = WorldDetector(WorldDetectorConfig(widths=(8, 8), hidden=16))
    features = detector.embed(torch.rand(3, 3, 20, 20))
    assert features.shape == (3, 16)


# ---------------------------------------------------------------------------------------------
# Prompt sets


def test_world_prompt_groups_are_deterministic_and_name_the_concept_only_in_targets():
    groups = world_prompt_groups(["disc"], max_per_group=10)
    assert groups == world_prompt_groups(["circle"], max_per_group=10)
    assert set(groups) == {"target", "anchor", "retain", "heldout", "cooccurrence"} and all(len(g) == 10 for g in groups.values())
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
    assert "torchmetrics" in result["settings"]["fid_kid"]["implementation"]


def test_target_prompts_never_enter_a_preservation_distance(tmp_path):
    rendered: list[tuple[str, int]] = []

    def render(prompts, seeds, size):
        rendered.extend(zip(prompts, seeds))
        return torch.full((len(prompts), 3, size, size), 0.5)

    result = evaluate(
        FakeModel(erased=True), _groups(), FakeDetector(), SamplerConfig(), 2, 2, 7, tmp_path, ["circle"],
        reference_model=FakeModel(), progress=False, ground_truth=GroundTruth(render, ("retain",), "grey squares"),
    )
    assert set(result["comparison"]) == {"target", "retain"}  # per group only: no pooled entry
    retain = result["comparison"]["retain"]["distances"]
    assert retain["num_real"] == retain["num_fake"] == 6 and not retain["fid_reliable"]
    # The ground truth is asked for the retain rows only (each section's images measured against the same real ones).
    assert rendered == row_seeds(_groups()["retain"], 2, 7)
    for section in ("before", "after"):
        assert result[section]["groups"]["retain"]["distances_to_truth"]["num_real"] == 6
        assert "distances_to_truth" not in result[section]["groups"]["target"]
    assert result["settings"]["ground_truth"] == {"source": "grey squares", "groups": ["retain"]}


def test_ground_truth_renders_the_models_world():
    from varerase.data.world_rendering import WorldConfig, render_prompts

    prompts, seeds = ["a red circle and a blue square on a plain background"], [3]
    larger = WorldConfig(min_pair_radius=0.24, max_pair_radius=0.25)
    assert torch.equal(world_ground_truth(world=larger).render(prompts, seeds, 32), render_prompts(prompts, seeds, larger))
    assert torch.equal(world_ground_truth().render(prompts, seeds, 32), render_prompts(prompts, seeds))
    assert not torch.equal(render_prompts(prompts, seeds, larger), render_prompts(prompts, seeds))


def test_ground_truth_distances_use_world_renders_of_the_same_captions(tmp_path):
    from varerase.data.world_rendering import render_prompts

    groups = world_prompt_groups(["circle"], max_per_group=3)
    truth = world_ground_truth(("retain",))
    asked: list = []

    def render(prompts, seeds, size):
        asked.append((list(prompts), list(seeds), size))
        return truth.render(prompts, seeds, size)

    recording = GroundTruth(render, truth.groups, truth.source)
    result = evaluate(FakeModel(), groups, FakeDetector(), SamplerConfig(), 2, 4, 0, tmp_path, ["circle"], progress=False, ground_truth=recording)
    rows = [(r["prompt"], r["seed"]) for r in result["model"]["groups"]["retain"]["rows"]]
    assert [(p, s) for prompts, seeds, _ in asked for p, s in zip(prompts, seeds)] == rows and {size for *_, size in asked} == {8}
    # The real images are the renders of those captions: the distance is the one computed by hand from them.
    by_hand = FeatureDistances(FakeDetector(), seed=0)
    prompts, seeds = [p for p, _ in rows], [s for _, s in rows]
    real = render_prompts(prompts, seeds, WorldConfig(image_size=8))
    by_hand.update(real, FakeModel().generate(FakeModel().encode_text(prompts), SamplerConfig(), seeds).images, prompts)
    assert result["model"]["groups"]["retain"]["distances_to_truth"]["fid"] == pytest.approx(by_hand.compute()["fid"], rel=1e-6)


class _NoFeatures(ConceptDetector):
    """Scores circles like ``FakeDetector`` but has no ``embed``."""

    name = "no-features"

    @property
    def concepts(self) -> tuple[str, ...]:
        return ("circle",)

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"circle": images[:, 0].mean((1, 2))}

    def weights_hash(self) -> str:
        return "0" * 64


def test_ground_truth_needs_a_detector_with_features(tmp_path):
    with pytest.raises(ConfigError, match="no image features"):
        evaluate(FakeModel(), _groups(), _NoFeatures(), SamplerConfig(), 1, 2, 0, tmp_path, ["circle"], progress=False, ground_truth=world_ground_truth())


def test_paraphrase_filter_keeps_only_prompts_the_original_draws_as_the_concept_half_the_time_or_more():
    # "ring": a circle on every seed; "oval": on even seeds only (presence exactly 1/2 over 2 seeds); other words: never.
    model = FakeModel(circle_words=("ring",), half_words=("oval",))
    kept, record = paraphrase_group(model, ["circle"], FakeDetector(), SamplerConfig(), ParaphraseFilterConfig(seeds=2), progress=False)
    candidates = paraphrase_concept_prompts(["circle"])
    assert record["num_candidates"] == len(candidates) == len(record["candidates"]) == 48 * len(PARAPHRASES["circle"])
    assert [(r["prompt"], r["concept"]) for r in record["candidates"]] == candidates
    for row in record["candidates"]:
        assert row["presence"] == (1.0 if " ring" in row["prompt"] else 0.5 if " oval" in row["prompt"] else 0.0)
        assert row["kept"] == (row["presence"] >= 0.5) and (row["kept"] or not row["used"])
    # 96 pass (two words over 48 target scenes); the group takes max_kept = 36 of them, evenly spaced, and says which.
    assert record["num_kept"] == 96 and len(kept) == record["num_used"] == 36 and all(p.group == "paraphrase" for p in kept)
    assert [p.prompt for p in kept] == [r["prompt"] for r in record["candidates"] if r["used"]]
    everything, _ = paraphrase_group(model, ["circle"], FakeDetector(), SamplerConfig(), ParaphraseFilterConfig(seeds=2, max_kept=None), progress=False)
    assert [p.prompt for p in everything] == [r["prompt"] for r in record["candidates"] if r["kept"]]
    assert min(model.seeds) == record["config"]["first_seed"] == 1_000_000  # far from the evaluation's seeds
    stricter, _ = paraphrase_group(
        model, ["circle"], FakeDetector(), SamplerConfig(), ParaphraseFilterConfig(seeds=2, min_presence=0.6, max_kept=None), progress=False
    )
    assert all(" ring" in p.prompt for p in stricter) and len(stricter) == 48


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


def test_stored_reference_images_are_drawn_once_and_give_the_same_metrics(tmp_path):
    def run(out, reference, store):
        return evaluate(FakeModel(erased=True), _groups(), FakeDetector(), SamplerConfig(), 2, 2, 7, out, ["circle"],
                        reference_model=reference, progress=False, reference_images=store)

    fresh = run(tmp_path / "fresh", FakeModel(), None)
    original, store = FakeModel(), ReferenceImages("fake-original", SamplerConfig())
    first = run(tmp_path / "first", original, store)
    drawn = len(original.seeds)
    second = run(tmp_path / "second", original, store)
    assert drawn == 10 and len(original.seeds) == drawn and len(store.images) == 10  # the second evaluation drew nothing
    for result in (first, second):
        assert {k: v for k, v in result.items() if k != "settings"} == {k: v for k, v in fresh.items() if k != "settings"}
    with pytest.raises(ConfigError, match="another reference model or sampler"):
        run(tmp_path / "other", original, ReferenceImages("fake-original", SamplerConfig(cfg=1.0)))