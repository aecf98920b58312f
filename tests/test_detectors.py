"""CLIP zero-shot detector and CLIP score on a tiny random CLIP; NudeNet wrapper (real run only when installed)."""

from __future__ import annotations

import builtins
import importlib.util
import json

import pytest
import torch

from varerase.errors import ConfigError
from varerase.evaluation.detectors.clip_detector import ClipZeroShotDetector
from varerase.evaluation.detectors.nudenet_detector import EXPOSED_CLASSES, NudeNetDetector, count_classes
from varerase.evaluation.metrics import clip_cosines, clip_score

WORDS = ["a", "photo", "of", "circle", "square", "red", "blue", "nudity"]


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised CLIP (32-px images) and a word-level tokenizer saved like a hub checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_clip")
    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "</s>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    tokenizer.save_pretrained(path)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16, eos_token_id=vocab["</s>"], bos_token_id=None, pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    return path


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return ClipZeroShotDetector.from_pretrained(tiny_clip_dir, {"circle": "a circle", "red": "red"}, templates=("a photo of {concept}", "{concept}"))


def test_clip_detector_loads_a_local_folder_and_uses_its_image_statistics(clip, tiny_clip_dir):
    assert clip.concepts == ("circle", "red") and clip.image_size == 32
    assert clip._mean.flatten().tolist() == [0.5, 0.5, 0.5]
    described = clip.describe()
    assert described["source"] == str(tiny_clip_dir) and len(described["weights_sha256"]) == 64
    assert described["templates"] == ["a photo of {concept}", "{concept}"] and described["neutral"] == "a photo"


def test_clip_detector_scores_are_probabilities_and_deterministic(clip):
    images = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(0))  # not square, not 32 px
    scores = clip.scores(images)
    assert set(scores) == {"circle", "red"}
    for values in scores.values():
        assert values.shape == (3,) and ((values >= 0) & (values <= 1)).all()
    assert all(torch.equal(scores[c], clip.scores(images)[c]) for c in scores)
    assert clip.detect(images)["circle"].dtype == torch.bool


def test_clip_preprocess_resizes_the_short_side_and_centre_crops(clip):
    processed = clip.preprocess(torch.full((2, 3, 64, 96), 0.75))
    assert processed.shape == (2, 3, 32, 32)
    assert torch.allclose(processed, torch.ones_like(processed))  # (0.75 − 0.5) / 0.25


def test_clip_score_reports_the_100x_scale_and_the_cosine(clip):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cosines = clip_cosines(clip, images, ["a red circle", "a blue square"])
    assert cosines.shape == (2,) and (cosines.abs() <= 1 + 1e-5).all()
    summary = clip_score(cosines, clip.source)
    assert summary["clip_score"] == pytest.approx(float((100 * cosines).clamp(min=0).mean()))
    assert summary["cosine"] == pytest.approx(float(cosines.mean())) and "cosine" in summary["scale"]
    assert clip.embed(images).shape == (2, 16)


def test_clip_detector_rejects_templates_without_a_concept_slot(clip):
    with pytest.raises(ConfigError, match="concept"):
        ClipZeroShotDetector(clip.model, clip.tokenizer, ["circle"], templates=("a photo",))


# ---------------------------------------------------------------------------------------------
# NudeNet


def test_exposed_classes_are_the_nine_nudenet_3_classes():
    assert len(set(EXPOSED_CLASSES)) == 9 and all(c.endswith("_EXPOSED") for c in EXPOSED_CLASSES)


def test_count_classes_counts_detections_at_the_threshold():
    detections = [
        [{"class": "FEET_EXPOSED", "score": 0.7}, {"class": "FACE_FEMALE", "score": 0.9}],
        [{"class": "FEET_EXPOSED", "score": 0.3}, {"class": "BELLY_EXPOSED", "score": 0.6}],
    ]
    counts = count_classes(detections, EXPOSED_CLASSES, threshold=0.6)
    assert counts["FEET_EXPOSED"] == 1 and counts["BELLY_EXPOSED"] == 1 and "FACE_FEMALE" not in counts
    assert count_classes(detections, EXPOSED_CLASSES, threshold=0.0)["FEET_EXPOSED"] == 2


def test_nudenet_detector_without_the_package_says_which_extra_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_nudenet(name, *args, **kwargs):
        if name == "nudenet":
            raise ImportError("No module named 'nudenet'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nudenet)
    with pytest.raises(ConfigError, match=r"varerase\[nudity\]"):
        NudeNetDetector()


@pytest.mark.skipif(importlib.util.find_spec("nudenet") is None, reason="nudenet not installed (optional extra)")
def test_nudenet_detector_scores_images_and_records_its_model():
    detector = NudeNetDetector()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    scores = detector.scores(images)["nudity"]
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
    described = detector.describe()
    assert described["threshold"] == 0.6 and described["model_file"] == "320n.onnx" and len(described["weights_sha256"]) == 64
    assert set(detector.class_counts(images, threshold=0.0)) == set(EXPOSED_CLASSES)
