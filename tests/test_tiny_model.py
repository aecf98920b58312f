"""The shipped built-in model: loads offline, is deterministic, follows prompts; its detector is accurate."""

from __future__ import annotations

import pytest
import torch

from varerase.data.world_rendering import make_dataset, to_float_images
from varerase.evaluation.detectors.registry import load_world_detector
from varerase.evaluation.detectors.world_detector import detector_accuracy
from varerase.evaluation.metrics import attribute_hits, prompt_following
from varerase.models.registry import load_model
from varerase.tiny.quality import PROMPT_KINDS, QualityReport, heldout_prompt_groups, heldout_prompts


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def detector():
    return load_world_detector()


def _agreement(model, detector, count: int = 48) -> float:
    """Fraction of held-out prompts (one- and two-object, styled and not) whose image shows every named attribute."""
    prompts = heldout_prompts()[:: len(heldout_prompts()) // count][:count]
    images = model.generate(model.encode_text(prompts), model.default_sampler, seed=list(range(len(prompts)))).images
    return prompt_following(attribute_hits(detector, images, prompts))["accuracy"]


def test_shipped_weights_load_offline_with_their_default_sampler(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert tiny.token_kind == "bitwise" and tiny.bits == 12
    assert tiny.schedule[-1] == (8, 8)
    assert tiny.default_sampler.cfg > 1


def test_same_seed_same_images(tiny):
    cond = tiny.encode_text(["a green heart on a dotted background"] * 2)
    a = tiny.generate(cond, tiny.default_sampler, seed=3).images
    b = tiny.generate(cond, tiny.default_sampler, seed=3).images
    c = tiny.generate(cond, tiny.default_sampler, seed=4).images
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)


def test_detector_is_accurate_on_fresh_world_images(detector):
    fresh = make_dataset(400, seed=987654)
    accuracy = detector_accuracy(detector, to_float_images(fresh.images), fresh.labels)
    assert set(accuracy) == {"shape", "colour", "objects", "background", "style"}
    assert min(accuracy.values()) >= 0.98, accuracy


def test_trained_model_follows_heldout_prompts_and_an_untrained_one_does_not(tiny, detector):
    from varerase.models.infinity.model import InfinityModel
    from varerase.models.infinity.transformer import InfinityTransformer

    assert _agreement(tiny, detector) >= 0.6
    torch.manual_seed(0)
    untrained = InfinityModel(InfinityTransformer(tiny.config), tiny.vae, tiny.text_encoder, default_sampler=tiny.default_sampler).eval()
    assert _agreement(untrained, detector) < 0.2


def test_mixed_precision_stores_linear_weights_in_bfloat16_without_changing_outputs(tiny, tmp_path):
    from safetensors.torch import load_file

    from varerase.edits.delta import EditConfig, ParameterEdit
    from varerase.edits.file_format import load_edit, save_edit

    lowered = load_model("tiny", autocast_dtype="bfloat16")
    dtypes = {name: p.dtype for name, p in lowered.transformer.named_parameters()}
    assert dtypes["blocks.0.ffn.fc1.weight"] == torch.bfloat16 and dtypes["blocks.0.ca_norm.weight"] == torch.float32
    assert dtypes["cfg_uncond"] == torch.float32
    reference = load_model("tiny")
    reference.autocast_dtype = "bfloat16"  # autocast alone, float32 weights
    cond = tiny.encode_text(["a red circle on a striped background"])
    maps = tiny.generate(cond, tiny.default_sampler, seed=0, decode=False).maps
    # Autocast computes linear layers in bfloat16 anyway: storing them there changes nothing.
    assert torch.equal(lowered.teacher_forced_logits(cond, maps), reference.teacher_forced_logits(cond, maps))

    # A delta far below bfloat16's resolution of the weight survives saving: merged weights are float32.
    edit = ParameterEdit(lowered, EditConfig(groups=["ffn"]))
    name = "transformer.blocks.0.ffn.fc1.weight"
    edit.deltas[name].data.fill_(1e-6)
    save_edit(edit, tmp_path / "edit.safetensors", lowered)
    assert load_file(tmp_path / "edit.safetensors")[name].dtype == torch.float32
    reloaded = load_edit(lowered, tmp_path)
    torch.testing.assert_close(reloaded.edit.delta(name), torch.full_like(reloaded.edit.delta(name), 1e-6), atol=3e-8, rtol=0)  # float32 resolution of W + Δ


def test_two_object_ceilings_use_the_true_maps_before_the_last_scale_and_its_predicted_bits(tiny, detector, monkeypatch):
    from varerase.tiny.quality import two_object_ceilings

    fresh = make_dataset(120, seed=4321)
    two = [i for i in range(len(fresh.captions)) if fresh.labels["shape"][i][1] >= 0][:24]
    images, captions = to_float_images(fresh.images[two]), [fresh.captions[i] for i in two]

    def logits_favouring(flip: bool):
        def teacher_forced_logits(cond, maps, gate=None):
            bits = torch.cat([m.flatten(1, 2) for m in maps], dim=1).float()
            bits = 1 - bits if flip else bits
            return torch.stack([1 - bits, bits], dim=-1) * 10  # [B, L, d, 2]: the favoured bit's logit is 10
        return teacher_forced_logits

    monkeypatch.setattr(tiny, "teacher_forced_logits", logits_favouring(flip=False))
    oracle = two_object_ceilings(tiny, detector, images, captions, tiny.default_sampler)
    assert oracle["last scale generated from the true earlier ones"] == oracle["tokenizer reconstructions"] >= 0.6
    monkeypatch.setattr(tiny, "teacher_forced_logits", logits_favouring(flip=True))
    inverted = two_object_ceilings(tiny, detector, images, captions, tiny.default_sampler)
    assert inverted["tokenizer reconstructions"] == oracle["tokenizer reconstructions"]
    assert inverted["last scale generated from the true earlier ones"] < oracle["tokenizer reconstructions"] - 0.3


def test_fingerprint_is_the_same_at_any_thread_count_and_sees_one_changed_weight():
    model = load_model("tiny")
    threads = torch.get_num_threads()
    names = []
    try:
        for count in (1, 2, 1):
            torch.set_num_threads(count)
            model.__dict__.pop("_fingerprint_cache", None)  # hash again, not the kept name
            names.append(model.fingerprint())
    finally:
        torch.set_num_threads(threads)
    assert names[0] == names[1] == names[2]
    weight = max(model.state_dict().values(), key=lambda t: t.numel())
    with torch.no_grad():
        weight.view(-1)[1] += 1e-3  # between the strided sample's elements: only the checksum sees it
    assert model.fingerprint() != names[0]


def test_quality_table_gives_intervals_and_the_shape_per_kind_of_prompt():
    groups = heldout_prompt_groups()
    assert {kind: len(group) for kind, group in groups.items()} == dict(zip(PROMPT_KINDS, (288, 144, 72)))
    assert heldout_prompts() == [prompt for group in groups.values() for prompt in group]
    counts = {"shape": 1008, "colour": 1008, "background": 1008, "style": 1008, "objects": 144}
    correct = {"shape": 931, "colour": 1004, "background": 1004, "style": 1006, "objects": 124}
    by_kind = {PROMPT_KINDS[0]: (575, 576), PROMPT_KINDS[1]: (233, 288), PROMPT_KINDS[2]: (123, 144)}
    report = QualityReport(correct, counts, by_kind, 0.9, {"shape": 1.0}, {"shape": 0.99}, 0.6, {}, 0)
    rows = {row[0]: row[1:] for row in report.rows()}
    # 124 of 144 is 86.1 %: above the 85 % bar, but its interval (79.5–90.8 %) reaches below it.
    assert rows["both objects right (two-object prompts) (144 images)"] == ("86.1% [79.5–90.8]", "≥ 85%", "met (its interval reaches below)")
    assert rows["shape agreement (1008 images)"][2] == "met"
    assert rows["shape agreement, one object, styled (288 images)"][0] == "80.9% [76.0–85.0]"
    assert report.agreement["objects"] == 124 / 144
