"""The synthetic world: deterministic captioned images, held-out prompts and concept names."""

import re

import numpy as np
import pytest

from varerase.data.concepts import paraphrase_concept_prompts, world_concept_prompts
from varerase.data.world import (
    BACKGROUNDS,
    COLOURS,
    HELDOUT_COMBINATIONS,
    HELDOUT_SHAPE_PAIRS,
    HELDOUT_TEMPLATES,
    PAIR_HELDOUT_TEMPLATES,
    PAIR_TRAIN_TEMPLATES,
    PARAPHRASES,
    SHAPES,
    STYLE_HELDOUT_TEMPLATES,
    STYLE_TRAIN_TEMPLATES,
    STYLES,
    SYNONYMS,
    TRAIN_TEMPLATES,
    UNSTYLED,
    Scene,
    WorldObject,
    allowed_combinations,
    allowed_shape_pairs,
    caption,
    concept_kind,
    named_concepts,
    pair_prompt,
    parse_attributes,
    parse_objects,
    prompt_for,
    with_style,
)
from varerase.data.world_rendering import COLOUR_RGB, WorldConfig, make_dataset, render, render_prompts, sample_scenes
from varerase.errors import ConfigError


def test_make_dataset_is_identical_for_the_same_seed():
    first, second = make_dataset(40, seed=3), make_dataset(40, seed=3)
    assert first.images.shape == (40, 32, 32, 3) and first.images.dtype == np.uint8
    np.testing.assert_array_equal(first.images, second.images)
    assert first.captions == second.captions
    assert set(first.labels) == {"shape", "colour", "background", "style"}
    for kind, labels in first.labels.items():
        np.testing.assert_array_equal(labels, second.labels[kind])


def test_make_dataset_differs_across_seeds():
    first, second = make_dataset(40, seed=3), make_dataset(40, seed=4)
    assert not np.array_equal(first.images, second.images)
    assert first.captions != second.captions


def _named_scene(scene: Scene) -> tuple[list[tuple[str, str]], str, str | None]:
    """What a scene's caption must name: its objects left to right, its background, its style (None when unstyled)."""
    return [(o.shape, o.colour) for o in scene.objects], scene.background, None if scene.style == UNSTYLED else scene.style


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_captions_name_exactly_the_drawn_objects_background_and_style(split):
    rng = np.random.default_rng(0)
    scenes = sample_scenes(800, rng, split)
    assert {len(s.objects) for s in scenes} == {1, 2} and {s.style for s in scenes} == set(STYLES)
    for scene in scenes:
        text = caption(scene, rng, split)
        objects, background, style = _named_scene(scene)
        assert parse_objects(text) == objects, text
        named = parse_attributes(text)
        assert named["background"] == background and named.get("style") == style, text
        assert len(named_concepts(text)) == 2 * len(objects) + 1 + (style is not None), text  # nothing else is named


def test_dataset_labels_agree_with_captions():
    data = make_dataset(300, seed=1)
    for i, text in enumerate(data.captions):
        objects = [(SHAPES[s], COLOURS[c]) for s, c in zip(data.labels["shape"][i], data.labels["colour"][i]) if s >= 0]
        assert parse_objects(text) == objects
        named = parse_attributes(text)
        assert named["background"] == BACKGROUNDS[data.labels["background"][i]]
        assert named.get("style", UNSTYLED) == STYLES[data.labels["style"][i]]


def _template_regex(template: str) -> re.Pattern[str]:
    # Captions turn "a" into "an" before vowels; compare both with "an" folded back to "a".
    pieces = re.split(r"\{\w+\}", re.sub(r"\ban ", "a ", template))
    return re.compile(".+".join(re.escape(piece) for piece in pieces))


def _caption_patterns(objects: tuple[str, ...], styles: tuple[str, ...]) -> list[re.Pattern[str]]:
    return [_template_regex(t) for t in objects] + [_template_regex(s.format(scene=t, style="{style}")) for s in styles for t in objects]


def test_train_split_never_uses_heldout_combinations_or_templates():
    train_patterns = _caption_patterns(TRAIN_TEMPLATES + PAIR_TRAIN_TEMPLATES, STYLE_TRAIN_TEMPLATES)
    heldout_patterns = _caption_patterns(HELDOUT_TEMPLATES + PAIR_HELDOUT_TEMPLATES, STYLE_HELDOUT_TEMPLATES)
    rng = np.random.default_rng(0)
    for split, allowed, forbidden in [
        ("train", train_patterns, heldout_patterns),
        ("heldout", heldout_patterns, train_patterns),
    ]:
        for scene in sample_scenes(2000, rng, split):
            if len(scene.objects) == 1:
                combination = (scene.objects[0].shape, scene.objects[0].colour, scene.background)
                assert (combination in HELDOUT_COMBINATIONS) == (split == "heldout")
            else:
                assert (tuple(o.shape for o in scene.objects) in HELDOUT_SHAPE_PAIRS) == (split == "heldout")
            text = re.sub(r"\ban ", "a ", caption(scene, rng, split))
            assert any(p.fullmatch(text) for p in allowed), text
            assert not any(p.fullmatch(text) for p in forbidden), text


def test_training_split_still_shows_every_attribute_and_every_shape_colour_pair():
    train = allowed_combinations("train")
    assert len(train) + len(HELDOUT_COMBINATIONS) == len(SHAPES) * len(COLOURS) * len(BACKGROUNDS)
    assert {(s, c) for s, c, _ in train} == {(s, c) for s in SHAPES for c in COLOURS}
    assert {b for _, _, b in train} == set(BACKGROUNDS)
    pairs = allowed_shape_pairs("train")
    assert len(pairs) + len(HELDOUT_SHAPE_PAIRS) == len(SHAPES) * (len(SHAPES) - 1)
    for shape in SHAPES:  # every shape is still seen on each side beside four others
        assert sum(left == shape for left, _ in pairs) == sum(right == shape for _, right in pairs) == 4


def test_objects_are_drawn_in_their_named_colours_on_a_grey_background():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:32, :32] + 0.5
    scenes = [s for s in sample_scenes(400, rng) if s.style == UNSTYLED]
    for scene in scenes:
        image = render(scene).astype(int)
        far = np.ones((32, 32), dtype=bool)
        for item in scene.objects:
            centre = image[int(item.y), int(item.x)]
            assert np.abs(centre - COLOUR_RGB[item.colour]).max() <= 25, (scene, centre)
            far &= np.hypot(xx - item.x, yy - item.y) > item.size + 2
        # Pixels well away from every object are background: light and without hue.
        background = image[far]
        assert (background.max(axis=1) - background.min(axis=1)).max() <= 8, scene
        assert background.min() >= 140, scene


def test_objects_stay_inside_the_image_and_two_never_overlap():
    rng = np.random.default_rng(1)
    scenes = sample_scenes(600, rng)
    for scene in scenes:
        for item in scene.objects:
            assert item.size <= item.x <= 32 - item.size and item.size <= item.y <= 32 - item.size
        if len(scene.objects) == 1:
            assert 8.9 <= scene.objects[0].size <= 13.2
        else:
            left, right = scene.objects
            assert left.x + left.size <= 16 <= right.x - right.size  # each inside its half
            assert 6.7 <= min(left.size, right.size) and max(left.size, right.size) <= 7.9
            assert left.shape != right.shape and left.colour != right.colour
    assert 0.4 < np.mean([len(s.objects) == 2 for s in scenes]) < 0.6


def test_every_style_changes_the_whole_image_in_its_own_way():
    item = WorldObject("star", "blue", 11.0, 16.0, 16.0, 0.0)
    looks = {style: render(Scene((item,), "striped", style)).astype(float) for style in STYLES}
    plain = looks[UNSTYLED]
    for style in STYLES[1:]:
        changed = np.abs(looks[style] - plain).max(axis=2) > 10
        assert changed.mean() > 0.4, style  # global: far more than the object's pixels
    for a in STYLES:
        for b in STYLES:
            if a < b:
                assert np.abs(looks[a] - looks[b]).mean() > 5, (a, b)
    neon = looks["neon"]
    assert neon[0:4, 0:4].mean() < 80 and neon[16, 16, 2] > 200  # dark background, a vivid blue object


def test_scenes_refuse_objects_that_share_a_shape_or_colour_or_are_too_many():
    red_circle = WorldObject("circle", "red", 6.0, 8.0, 8.0, 0.0)
    with pytest.raises(ConfigError, match="different shapes"):
        Scene((red_circle, WorldObject("circle", "blue", 6.0, 24.0, 8.0, 0.0)), "plain")
    with pytest.raises(ConfigError, match="different colours"):
        Scene((red_circle, WorldObject("star", "red", 6.0, 24.0, 8.0, 0.0)), "plain")
    with pytest.raises(ConfigError, match="1 to 2 objects"):
        Scene((), "plain")
    with pytest.raises(ConfigError, match="unknown style"):
        Scene((red_circle,), "plain", "cubist")


def test_unknown_concept_suggests_the_near_match():
    with pytest.raises(ConfigError, match=r"unknown concept 'circel'; did you mean 'circle'\?"):
        concept_kind("circel")
    assert concept_kind("violet") == "colour"
    assert concept_kind("Plus Sign") == "shape"
    assert concept_kind("gradient") == "background"
    assert concept_kind("sepia-toned") == "style"


def test_parse_attributes_recognises_synonyms_plurals_and_missing_kinds():
    assert parse_attributes("two violet discs on a polka-dot backdrop") == {
        "shape": "circle",
        "colour": "purple",
        "background": "dotted",
    }
    assert parse_attributes("a plus sign") == {"shape": "cross"}
    assert parse_attributes("Boxes, stripy") == {"shape": "square", "background": "striped"}
    assert parse_attributes("a dog in a park") == {}
    assert parse_attributes("a red box, glowing neon art") == {"shape": "square", "colour": "red", "style": "neon"}


def test_parse_objects_binds_each_colour_to_the_next_shape():
    assert parse_objects("a red circle and a blue box on a striped background") == [("circle", "red"), ("square", "blue")]
    assert parse_objects("a circle beside a violet star") == [("circle", None), ("star", "purple")]
    assert parse_objects("a red object") == [] and parse_objects("a red object shaped like a disc") == [("circle", "red")]


def test_prompt_for_builds_canonical_prompts_from_any_attributes():
    assert prompt_for(shape="circle", colour="red") == "a red circle"
    assert prompt_for(shape="circle", background="striped") == "a circle on a striped background"
    assert prompt_for(colour="orange") == "an orange object"
    assert prompt_for(background="dotted") == "a dotted background"
    full = prompt_for(shape="star", colour="yellow", background="gradient", template=TRAIN_TEMPLATES[3])
    assert full == "an image of a yellow star over a gradient background"
    assert parse_attributes(prompt_for("disc", "violet")) == {"shape": "circle", "colour": "purple"}
    assert prompt_for(shape="circle", colour="red", style="sepia") == "a red circle, in sepia style"
    assert prompt_for(shape="circle", style="unstyled") == "a circle"  # prompts leave "unstyled" unsaid
    assert with_style("a red circle", "neon", STYLE_TRAIN_TEMPLATES[1]) == "neon style: a red circle"
    two = pair_prompt(("red", "disc"), ("orange", "box"), "stripy", PAIR_TRAIN_TEMPLATES[0], style="pastel")
    assert two == "a red disc and an orange box on a stripy background, in pastel style"


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
    templates = TRAIN_TEMPLATES + HELDOUT_TEMPLATES + PAIR_TRAIN_TEMPLATES + PAIR_HELDOUT_TEMPLATES
    caption_words = _words([t.format(shape="", colour="", background="", shape2="", colour2="") for t in templates])
    caption_words |= _words(t.format(scene="", style="") for t in STYLE_TRAIN_TEMPLATES + STYLE_HELDOUT_TEMPLATES)
    caption_words |= _words(w for words in SYNONYMS.values() for w in words)
    assert set(PARAPHRASES) == set(SYNONYMS) and PARAPHRASES[UNSTYLED] == ()
    for concept, phrases in PARAPHRASES.items():
        if concept == UNSTYLED:
            continue
        assert len(phrases) == len(set(phrases)) >= 5
        # No caption word for the concept, and no word built on one ("circular", "reddish", "stripes").
        assert not any(s[:5] in w for s in SYNONYMS[concept] for w in _words(phrases)), concept
        concept_words = _words(phrases) - {"shape", "symbol", "of", "sign"}
        assert not concept_words & caption_words, (concept, concept_words & caption_words)
    for prompt, concept in paraphrase_concept_prompts(["circle", "striped", "sepia"]):
        assert concept not in named_concepts(prompt)


def test_paraphrase_candidates_are_the_target_scenes_with_the_word_replaced():
    candidates = paraphrase_concept_prompts(["circle"])
    targets = [pair.target for pair in world_concept_prompts(["circle"]).pairs]
    assert len(candidates) == len(targets) * len(PARAPHRASES["circle"])
    for j, word in enumerate(PARAPHRASES["circle"]):  # word by word, each over every target scene
        for i, target in enumerate(targets):
            prompt, concept = candidates[j * len(targets) + i]
            assert concept == "circle" and re.sub(r"\ban? ", "a ", prompt) == re.sub(r"\ban? ", "a ", target.replace("circle", word))


def test_style_concept_prompts_pair_each_styled_caption_with_its_unstyled_self():
    prompts = world_concept_prompts(["sepia"])
    assert len(prompts.pairs) == len(SHAPES) * len(COLOURS)
    for pair in prompts.pairs:
        assert parse_attributes(pair.target)["style"] == "sepia" and "style" not in parse_attributes(pair.anchor)
        assert parse_objects(pair.target) == parse_objects(pair.anchor)
    assert not any(parse_attributes(text).get("style") == "sepia" for text in prompts.retain)
    assert {parse_attributes(text).get("style", UNSTYLED) for text in prompts.retain} == set(STYLES) - {"sepia"}
    circle = world_concept_prompts(["circle"])  # object concepts are erased in every style too
    assert {parse_attributes(p.target).get("style", UNSTYLED) for p in circle.pairs} == set(STYLES)
    with pytest.raises(ValueError, match="absence of a style"):
        world_concept_prompts(["unstyled"])


def test_render_prompts_draws_the_named_scene_placed_by_the_seed_alone():
    from varerase.evaluation.detectors.registry import load_world_detector

    prompts = ["a red disc on a stripy backdrop", "a red circle on a striped background", "a red disc on a stripy backdrop"]
    images = render_prompts(prompts, [4, 4, 5])
    assert images.shape == (3, 3, 32, 32) and images.dtype.is_floating_point
    assert (images[0] == images[1]).all() and not (images[0] == images[2]).all()  # synonyms: same scene; new seed: new placement
    captions = [pair.anchor for pair in world_concept_prompts(["circle"]).pairs[::4]]
    captions += [pair_prompt(("red", "star"), ("blue", "square"), "dotted", style="mosaic")]
    detector = load_world_detector()
    rendered = render_prompts(captions, list(range(len(captions))))
    for text, seen, hits in zip(captions, detector.predict_objects(rendered), detector.attribute_hits(rendered, captions)):
        assert sorted(seen) == sorted(parse_objects(text)) and all(hits.values()), (text, seen, hits)  # the shipped detector reads back each caption
    assert render_prompts(["a blue box, dotted backdrop"], [0], WorldConfig(image_size=16)).shape == (1, 3, 16, 16)
    with pytest.raises(ConfigError, match="names no background"):
        render_prompts(["a red circle"], [0])
    with pytest.raises(ConfigError, match="an object has no colour"):
        render_prompts(["a circle on a plain background"], [0])
