"""The synthetic world: deterministic captioned images, held-out prompts and concept names."""

import re

import numpy as np
import pytest

from varerase.data.concepts import paraphrase_concept_prompts, world_concept_prompts
from varerase.data.world import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    HELDOUT_COMBINATIONS,
    HELDOUT_TEMPLATES,
    KINDS,
    PARAPHRASES,
    SHAPES,
    SYNONYMS,
    TRAIN_TEMPLATES,
    allowed_combinations,
    caption,
    concept_kind,
    named_concepts,
    parse_attributes,
    prompt_for,
)
from varerase.data.world_rendering import COLOUR_RGB, WorldConfig, make_dataset, render, render_prompts, sample_scenes
from varerase.errors import ConfigError


def test_make_dataset_is_identical_for_the_same_seed():
    first, second = make_dataset(40, seed=3), make_dataset(40, seed=3)
    assert first.images.shape == (40, 32, 32, 3) and first.images.dtype == np.uint8
    np.testing.assert_array_equal(first.images, second.images)
    assert first.captions == second.captions
    for kind in KINDS:
        np.testing.assert_array_equal(first.labels[kind], second.labels[kind])


def test_make_dataset_differs_across_seeds():
    first, second = make_dataset(40, seed=3), make_dataset(40, seed=4)
    assert not np.array_equal(first.images, second.images)
    assert first.captions != second.captions


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_captions_name_exactly_the_drawn_attributes(split):
    rng = np.random.default_rng(0)
    for scene in sample_scenes(600, rng, split):
        text = caption(scene, rng, split)
        assert parse_attributes(text) == scene.attributes, text
        assert len(named_concepts(text)) == 3, text  # nothing else is named


def test_dataset_labels_agree_with_captions():
    data = make_dataset(200, seed=1)
    for i, text in enumerate(data.captions):
        assert parse_attributes(text) == {kind: ATTRIBUTES[kind][data.labels[kind][i]] for kind in KINDS}


def _template_regex(template: str) -> re.Pattern[str]:
    # Captions turn "a" into "an" before vowels; compare both with "an" folded back to "a".
    pieces = re.split(r"\{\w+\}", re.sub(r"\ban ", "a ", template))
    return re.compile(".+".join(re.escape(piece) for piece in pieces))


def test_train_split_never_uses_heldout_combinations_or_templates():
    heldout_patterns = [_template_regex(t) for t in HELDOUT_TEMPLATES]
    train_patterns = [_template_regex(t) for t in TRAIN_TEMPLATES]
    rng = np.random.default_rng(0)
    for split, allowed, forbidden in [
        ("train", train_patterns, heldout_patterns),
        ("heldout", heldout_patterns, train_patterns),
    ]:
        for scene in sample_scenes(2000, rng, split):
            assert (scene.combination in HELDOUT_COMBINATIONS) == (split == "heldout")
            text = re.sub(r"\ban ", "a ", caption(scene, rng, split))
            assert any(p.fullmatch(text) for p in allowed), text
            assert not any(p.fullmatch(text) for p in forbidden), text


def test_training_split_still_shows_every_attribute_and_every_shape_colour_pair():
    train = allowed_combinations("train")
    assert len(train) + len(HELDOUT_COMBINATIONS) == len(SHAPES) * len(COLOURS) * len(BACKGROUNDS)
    assert {(s, c) for s, c, _ in train} == {(s, c) for s in SHAPES for c in COLOURS}
    assert {b for _, _, b in train} == set(BACKGROUNDS)


def test_object_is_drawn_in_its_named_colour_on_a_grey_background():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:32, :32] + 0.5
    for scene in sample_scenes(300, rng):
        image = render(scene).astype(int)
        centre = image[int(scene.y), int(scene.x)]
        assert np.abs(centre - COLOUR_RGB[scene.colour]).max() <= 25, (scene, centre)
        # Pixels well away from the object are background: light and without hue.
        far = np.hypot(xx - scene.x, yy - scene.y) > scene.size + 2
        background = image[far]
        assert (background.max(axis=1) - background.min(axis=1)).max() <= 8, scene
        assert background.min() >= 140, scene


def test_objects_stay_inside_the_image():
    rng = np.random.default_rng(1)
    for scene in sample_scenes(500, rng):
        assert scene.size <= scene.x <= 32 - scene.size
        assert scene.size <= scene.y <= 32 - scene.size
        assert 8.9 <= scene.size <= 13.2


def test_unknown_concept_suggests_the_near_match():
    with pytest.raises(ConfigError, match=r"unknown concept 'circel'; did you mean 'circle'\?"):
        concept_kind("circel")
    assert concept_kind("violet") == "colour"
    assert concept_kind("Plus Sign") == "shape"
    assert concept_kind("gradient") == "background"


def test_parse_attributes_recognises_synonyms_plurals_and_missing_kinds():
    assert parse_attributes("two violet discs on a polka-dot backdrop") == {
        "shape": "circle",
        "colour": "purple",
        "background": "dotted",
    }
    assert parse_attributes("a plus sign") == {"shape": "cross"}
    assert parse_attributes("Boxes, stripy") == {"shape": "square", "background": "striped"}
    assert parse_attributes("a dog in a park") == {}


def test_prompt_for_builds_canonical_prompts_from_any_attributes():
    assert prompt_for(shape="circle", colour="red") == "a red circle"
    assert prompt_for(shape="circle", background="striped") == "a circle on a striped background"
    assert prompt_for(colour="orange") == "an orange object"
    assert prompt_for(background="dotted") == "a dotted background"
    full = prompt_for(shape="star", colour="yellow", background="gradient", template=TRAIN_TEMPLATES[3])
    assert full == "an image of a yellow star over a gradient background"
    assert parse_attributes(prompt_for("disc", "violet")) == {"shape": "circle", "colour": "purple"}


def test_prompt_for_rejects_wrong_kinds_and_unfilled_templates():
    with pytest.raises(ConfigError, match="'striped' is a background, not a colour"):
        prompt_for(colour="striped")
    with pytest.raises(ConfigError, match="needs background"):
        prompt_for(shape="star", colour="red", template=TRAIN_TEMPLATES[0])
    with pytest.raises(ConfigError, match="at least one"):
        prompt_for()


def _words(texts) -> set[str]:
    return {w for t in texts for w in re.findall(r"[a-z][a-z'\-]*", t.lower())}


def test_paraphrases_use_no_word_of_any_caption_and_are_not_read_as_their_concept():
    caption_words = _words([t.format(shape="", colour="", background="") for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES])
    caption_words |= _words(w for words in SYNONYMS.values() for w in words)
    assert set(PARAPHRASES) == set(SYNONYMS)
    for concept, phrases in PARAPHRASES.items():
        assert len(phrases) == len(set(phrases)) >= 5
        # No caption word for the concept, and no word built on one ("circular", "reddish", "stripes").
        assert not any(s[:5] in w for s in SYNONYMS[concept] for w in _words(phrases)), concept
        concept_words = _words(phrases) - {"shape", "symbol", "of", "sign"}
        assert not concept_words & caption_words, (concept, concept_words & caption_words)
    for prompt, concept in paraphrase_concept_prompts(["circle", "striped"]):
        assert concept not in named_concepts(prompt)


def test_paraphrase_candidates_are_the_target_scenes_with_the_word_replaced():
    candidates = paraphrase_concept_prompts(["circle"])
    targets = [pair.target for pair in world_concept_prompts(["circle"]).pairs]
    assert len(candidates) == len(targets) * len(PARAPHRASES["circle"])
    for j, word in enumerate(PARAPHRASES["circle"]):  # word by word, each over every target scene
        for i, target in enumerate(targets):
            prompt, concept = candidates[j * len(targets) + i]
            assert concept == "circle" and re.sub(r"\ban? ", "a ", prompt) == re.sub(r"\ban? ", "a ", target.replace("circle", word))


def test_render_prompts_draws_the_named_scene_placed_by_the_seed_alone():
    from varerase.evaluation.detectors.registry import load_world_detector

    prompts = ["a red disc on a stripy backdrop", "a red circle on a striped background", "a red disc on a stripy backdrop"]
    images = render_prompts(prompts, [4, 4, 5])
    assert images.shape == (3, 3, 32, 32) and images.dtype.is_floating_point
    assert (images[0] == images[1]).all() and not (images[0] == images[2]).all()  # synonyms: same scene; new seed: new placement
    captions = [pair.anchor for pair in world_concept_prompts(["circle"]).pairs[:12]]
    predicted = load_world_detector().predict(render_prompts(captions, list(range(12))))
    for i, text in enumerate(captions):  # the shipped detector reads back what each caption names
        assert {kind: ATTRIBUTES[kind][int(predicted[kind][i])] for kind in KINDS} == parse_attributes(text)
    assert render_prompts(["a blue box, dotted backdrop"], [0], WorldConfig(image_size=16)).shape == (1, 3, 16, 16)
    with pytest.raises(ConfigError, match="names no colour and no background"):
        render_prompts(["a circle"], [0])
