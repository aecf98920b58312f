"""The world's concept detector: accuracy after brief training, scores, persistence, determinism."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from varerase.data.world import ATTRIBUTES, KINDS
from varerase.data.world_rendering import make_dataset, to_float_images
from varerase.errors import CheckpointError
from varerase.evaluation.detectors.world_detector import WorldDetector, WorldDetectorConfig, train_world_detector


@pytest.fixture(scope="module")
def detector() -> WorldDetector:
    """Trained for 300 steps of 64 (about 10 s on 2 cores)."""
    data = make_dataset(2000, seed=1)
    trained, metrics = train_world_detector(
        WorldDetectorConfig(), data.images, data.labels, steps=300, batch_size=64, seed=0, progress=False
    )
    assert set(metrics["accuracy_clean"]) == set(KINDS)
    return trained


def _accuracy(detector, data) -> dict[str, float]:
    predicted = detector.predict(to_float_images(data.images))
    return {kind: (predicted[kind] == torch.as_tensor(data.labels[kind])).float().mean().item() for kind in KINDS}


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_briefly_trained_detector_reads_fresh_world_images(detector, split):
    accuracy = _accuracy(detector, make_dataset(600, seed=2, split=split))
    assert min(accuracy.values()) >= 0.95, accuracy


def test_detector_reads_images_of_another_size(detector):
    data = make_dataset(200, seed=3)
    images = F.interpolate(to_float_images(data.images), scale_factor=2, mode="nearest")
    predicted = detector.predict(images)
    for kind in KINDS:
        assert (predicted[kind] == torch.as_tensor(data.labels[kind])).float().mean() >= 0.9


def test_scores_are_per_kind_probabilities_and_detect_thresholds_them(detector):
    images = to_float_images(make_dataset(16, seed=4).images)
    scores = detector.scores(images)
    assert tuple(scores) == detector.concepts
    for kind in KINDS:
        per_kind = torch.stack([scores[c] for c in ATTRIBUTES[kind]], dim=1)
        assert ((per_kind >= 0) & (per_kind <= 1)).all()
        torch.testing.assert_close(per_kind.sum(dim=1), torch.ones(16))
    detected = detector.detect(images)
    for concept in detector.concepts:
        assert torch.equal(detected[concept], scores[concept] >= detector.threshold)


def test_save_then_load_gives_identical_scores_and_description(detector, tmp_path):
    detector.threshold = 0.7
    try:
        detector.save(tmp_path / "detector.safetensors")
        loaded = WorldDetector.load(tmp_path / "detector.safetensors")
    finally:
        detector.threshold = 0.5
    images = to_float_images(make_dataset(32, seed=5).images)
    before, after = detector.scores(images), loaded.scores(images)
    for concept in detector.concepts:
        assert torch.equal(before[concept], after[concept])
    assert loaded.threshold == 0.7
    assert loaded.describe()["weights_sha256"] == detector.describe()["weights_sha256"]
    assert loaded.config == detector.config


def test_load_rejects_a_file_that_is_not_a_world_detector(tmp_path):
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "something"})
    with pytest.raises(CheckpointError, match="not a world detector"):
        WorldDetector.load(tmp_path / "other.safetensors")


def _train_briefly(seed: int, **kwargs):
    data = make_dataset(120, seed=6)
    return train_world_detector(
        WorldDetectorConfig(**kwargs.pop("config", {})),
        data.images,
        data.labels,
        steps=3,
        batch_size=16,
        seed=seed,
        progress=False,
        **kwargs,
    )


def test_training_is_deterministic_for_a_seed():
    first, second, other = _train_briefly(0)[0], _train_briefly(0)[0], _train_briefly(1)[0]
    assert first.weights_hash() == second.weights_hash()
    assert first.weights_hash() != other.weights_hash()


def test_training_with_a_tokenizer_reconstructs_once_and_reports_reconstruction_accuracy():
    reconstructed = []

    def blur(images):
        reconstructed.append(len(images))
        return F.interpolate(F.interpolate(images, size=(12, 12), mode="area"), size=images.shape[-2:], mode="bilinear")

    _, metrics = _train_briefly(0, reconstruct=blur, config={"num_reconstructions": 40})
    # The 40 training reconstructions and the 12 validation images, each made once.
    assert sum(reconstructed) == 40 + 12
    assert metrics["num_reconstructions"] == 40
    assert set(metrics["accuracy_reconstructed"]) == set(KINDS)
