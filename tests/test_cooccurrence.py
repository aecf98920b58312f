"""Co-occurrence preservation: the two-object prompts, the kept measure, evaluate's summary and the benchmark table."""

from __future__ import annotations

import pytest
import torch

from conftest import FunctionDetector
from test_metrics import FakeModel
from varerase.data.concepts import cooccurrence_prompts
from varerase.data.world import COLOURS, SHAPES, named_concepts, parse_attributes, parse_objects
from varerase.evaluation.benchmark_table import benchmark_row, columns, markdown_table
from varerase.evaluation.detectors.world_detector import WorldDetector, WorldDetectorConfig
from varerase.evaluation.evaluate import evaluate
from varerase.evaluation.metrics import cooccurrence_kept, rate_summary
from varerase.evaluation.prompts import EvalPrompt, spread, world_prompt_groups
from varerase.models.base import SamplerConfig

# ---------------------------------------------------------------------------------------------
# Prompts


def _erased_side(prompt: str, erased: set[str]) -> int:
    """Which object (0: first named, drawn left) names an erased concept; asserts exactly one does and the other shares none."""
    objects = parse_objects(prompt)
    assert len(objects) == 2 and all(colour is not None for _, colour in objects), prompt
    naming = [i for i, (shape, colour) in enumerate(objects) if {shape, colour} & erased]
    assert len(naming) == 1, prompt
    (first, first_colour), (second, second_colour) = objects
    assert first != second and first_colour != second_colour, prompt  # two objects differ in shape and colour
    assert sum(c in erased for c in named_concepts(prompt)) == 1, prompt  # nothing else (background) is erased
    assert "style" not in parse_attributes(prompt), prompt
    return naming[0]


@pytest.mark.parametrize("concept", ["circle", "red"])
def test_cooccurrence_prompts_name_the_erased_concept_in_exactly_one_object_and_rotate_the_rest(concept):
    prompts = cooccurrence_prompts([concept])
    assert len(prompts) == 36 == len(set(prompts)) and prompts == cooccurrence_prompts([concept])
    sides = [_erased_side(p, {concept}) for p in prompts]
    assert sides.count(0) == sides.count(1) == 18  # the erased object is drawn on the left as often as on the right
    others = [parse_objects(p)[1 - side] for p, side in zip(prompts, sides)]
    assert {shape for shape, _ in others} == set(SHAPES) - {concept} and {colour for _, colour in others} == set(COLOURS) - {concept}
    assert len(set(others)) >= 20  # many (shape, colour) pairs, not a few repeated
    assert {parse_attributes(p)["background"] for p in prompts} == {"plain", "striped", "dotted", "gradient"}
    # The three pair templates, 12 prompts each: "… and … background", "a photo of … beside …", "…, … backdrop".
    beside, backdrop = sum(" beside " in p for p in prompts), sum(p.endswith("backdrop") for p in prompts)
    assert (beside, backdrop, sum(" and " in p and p.endswith(" background") for p in prompts)) == (12, 12, 12)


def test_cooccurrence_prompts_of_several_concepts_take_turns_and_name_one_erased_concept_each():
    prompts = cooccurrence_prompts(["disc", "red", "striped"])  # a synonym, a colour, a background
    erased = {"circle", "red", "striped"}
    sides = [_erased_side(p, erased) for p in prompts]
    assert len(prompts) == 36 and set(sides) == {0, 1}
    assert ["circle" in named_concepts(p) for p in prompts] == [i % 2 == 0 for i in range(36)]  # circle, red, circle, …
    assert cooccurrence_prompts(["circle", "red", "striped"], count=6) == prompts[:6]


@pytest.mark.parametrize("concepts", [["sepia"], ["striped"], ["neon", "dotted"]])
def test_cooccurrence_prompts_are_empty_for_styles_and_backgrounds(concepts):
    assert cooccurrence_prompts(concepts) == []
    assert "cooccurrence" not in world_prompt_groups(concepts, max_per_group=3)


def test_world_prompt_groups_cut_the_cooccurrence_group_like_the_others():
    groups = world_prompt_groups(["circle"], max_per_group=5)
    assert [p.prompt for p in groups["cooccurrence"]] == spread(cooccurrence_prompts(["circle"]), 5)
    assert all(p.group == "cooccurrence" and p.seed is None for p in groups["cooccurrence"])
    assert len(world_prompt_groups(["circle"])["cooccurrence"]) == 36


# ---------------------------------------------------------------------------------------------
# The measure


def test_cooccurrence_kept_needs_every_other_object_with_its_shape_and_colour():
    pair = "a red circle and a blue square on a plain background"
    prompts = [pair, pair, pair, "a green star beside a red heart", "a red circle", "a green star and a blue square", pair]
    seen = [
        [("square", "blue")],  # the other object is there (the circle erased): kept
        [("circle", "red")],  # only the erased one: not kept
        [("square", "red"), ("circle", "blue")],  # a square, but not the blue one: not kept
        [("star", "green"), ("heart", "blue")],  # colour erased ("red"): the green star is the other object, and there
        [],  # one object: does not qualify
        [],  # neither object names an erased concept: does not qualify
        [("square", "blue")],
    ]
    assert cooccurrence_kept(prompts[:6], seen[:6], {"circle", "red"}) == [True, False, False, True, None, None]
    # Both objects erased: nothing to keep, so it does not qualify either.
    assert cooccurrence_kept([pair], [[]], {"circle", "blue"}) == [None]
    assert cooccurrence_kept([pair], [[("square", "blue")]], {"striped"}) == [None]  # a background names no object
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        cooccurrence_kept(prompts[:2], seen[:1], {"circle"})


# ---------------------------------------------------------------------------------------------
# evaluate()


class SeesObjects(FunctionDetector):
    """Scores every concept by the red channel; ``predict_objects`` sees every (shape, colour) pair in a
    red image (``FakeModel`` draws red for prompts naming a circle, unless erased) and nothing in a blue one."""

    def predict_objects(self, images: torch.Tensor) -> list[list[tuple[str, str]]]:
        return [[(s, c) for s in SHAPES for c in COLOURS] if image[0].mean() > image[2].mean() else [] for image in images]


def test_evaluate_reports_cooccurrence_kept_before_and_after_for_detectors_that_name_objects(tmp_path):
    prompts = cooccurrence_prompts(["circle"], count=3)
    groups = {"cooccurrence": [EvalPrompt(p) for p in prompts], "retain": [EvalPrompt("a blue square")]}
    detector = SeesObjects(lambda images: images[:, 0].mean((1, 2)), concepts=("circle",))
    result = evaluate(FakeModel(erased=True), groups, detector, SamplerConfig(), 2, 4, 0, tmp_path, ["circle"], reference_model=FakeModel(), progress=False)
    before, after = (result[side]["groups"]["cooccurrence"] for side in ("before", "after"))
    assert before["cooccurrence_kept"] == rate_summary(6, 6) and after["cooccurrence_kept"] == rate_summary(0, 6)
    assert [r["cooccurrence_kept"] for r in after["rows"]] == [False] * 6
    assert result["comparison"]["cooccurrence"]["cooccurrence_kept"] == {"before": 1.0, "after": 0.0}
    # A group without such prompts, or a detector that cannot name objects, has no such figure.
    assert "cooccurrence_kept" not in result["after"]["groups"]["retain"] and "cooccurrence_kept" not in result["comparison"]["retain"]
    plain = FunctionDetector(lambda images: images[:, 0].mean((1, 2)), concepts=("circle",))
    without = evaluate(FakeModel(), groups, plain, SamplerConfig(), 1, 4, 0, tmp_path / "plain", ["circle"], progress=False)
    assert "cooccurrence_kept" not in without["model"]["groups"]["cooccurrence"]


def test_evaluate_measures_cooccurrence_with_the_world_detector(tmp_path):
    torch.manual_seed(0)
    detector = WorldDetector(WorldDetectorConfig(widths=(8,), hidden=8))  # random weights: only the plumbing is checked
    groups = {"cooccurrence": world_prompt_groups(["circle"], max_per_group=2)["cooccurrence"]}
    result = evaluate(FakeModel(), groups, detector, SamplerConfig(), 2, 4, 0, tmp_path, ["circle"], progress=False)
    kept = result["model"]["groups"]["cooccurrence"]["cooccurrence_kept"]
    assert kept["n"] == 4 and 0 <= kept["count"] <= 4 and len(kept["ci95"]) == 2


# ---------------------------------------------------------------------------------------------
# The benchmark table


def _metrics(concept: str, kept: tuple[int, int] | None) -> dict:
    """A minimal ``metrics.json`` dict for ``concept``: target and retain groups, and a co-occurrence group of 36 images
    kept ``kept`` (before, after) times."""
    def group(side: int) -> dict:
        groups = {
            "target": {"presence_intervals": {concept: rate_summary(36 - 30 * side, 36)}},
            "retain": {"prompt_following": {"accuracy": 0.5, "num_correct": 18, "num_images": 36, "ci95": [0.3, 0.7]}},
        }
        if kept is not None:
            groups["cooccurrence"] = {"cooccurrence_kept": rate_summary(kept[side], 36)}
        return {"groups": groups}

    return {"before": group(0), "after": group(1), "comparison": {}, "settings": {"feature_space": None}}


def test_benchmark_rows_and_table_report_cooccurrence_kept():
    erasure = {"wall_seconds": 1.0, "forward_tokens": 10}
    row = benchmark_row("circle", "m", _metrics("circle", (36, 9)), erasure)
    assert row["cooccurrence_kept"] == [1.0, 0.25] and row["intervals"]["cooccurrence_kept"]["after"] == rate_summary(9, 36)
    background = benchmark_row("striped", "m", _metrics("striped", None), erasure)
    assert background["cooccurrence_kept"] is None and background["intervals"]["cooccurrence_kept"] is None
    lines = markdown_table([row, background]).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    column = header.index("co-occurrence kept")
    assert tuple(header) == columns(None)
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:4]]
    (low, high), (all_low, _) = rate_summary(9, 36)["ci95"], rate_summary(36, 36)["ci95"]
    assert cells[0][column] == f"100 [{100 * all_low:.0f}–100] → 25 [{100 * low:.0f}–{100 * high:.0f}] % (n 36)"
    assert cells[1][column] == "–"
    assert "Co-occurrence kept" in lines[-1]
