"""Recorded-loss regression: each method's first 10 losses on the shipped tiny model match known values.

Every method that trains (vare, s-vare, sace, esd, naive) runs 10 optimiser steps on the shipped
tiny model (``load_model("tiny")``) erasing the world concept "circle", with its ``tiny`` preset
and the small fixed settings in ``SETTINGS``; its per-step losses (the trainer's history) and the
norm of its final edit must equal the values recorded in ``tests/data/loss_curves.json``. UCE
(closed form) is checked by the norm of each delta it writes. Tolerance: rtol 1e-4, atol 1e-6 —
tight enough to catch a changed loss, loose enough for reordered float sums.

Re-record ONLY when a loss (or the tiny model, or a method's tiny preset) is changed on purpose,
and say so in the commit:

    .venv/bin/python tests/test_loss_regression.py > tests/data/loss_curves.json

(the ``__main__`` block below runs the same code on one thread and prints the curves as JSON).
A refactor that should not change the maths must pass this test without re-recording.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

RECORDED = Path(__file__).parent / "data" / "loss_curves.json"
RTOL, ATOL = 1e-4, 1e-6
CONCEPT = "circle"
STEPS = 10
TRAINED = ("vare", "s-vare", "sace", "esd", "naive")
# Flat overrides on top of each method's ``tiny`` preset (kept fixed: the recorded values depend on them).
SETTINGS = {"steps": STEPS, "batch_size": 2, "samples_per_pair": 1, "seed": 42}
EXTRA_SETTINGS = {"sace": {"benign_batch_size": 2}}


def edit_delta_norms(edit) -> dict[str, float]:
    """``‖Δ‖`` of every parameter the edit changes, by name."""
    with torch.no_grad():
        return {name: float(edit.delta(name).double().norm()) for name in edit.names}


def erase(model, method: str):
    """Erase ``CONCEPT`` with ``method``; returns ``(result, per-step loss records without "step")``."""
    from varerase.data.concepts import world_concept_prompts
    from varerase.methods.registry import has_preset, method_config
    from varerase.methods.runner import run_erasure
    from varerase.training.trainer import Trainer

    world = world_concept_prompts([CONCEPT])
    if method == "uce":
        config = method_config("uce", None, {"seed": 42})
    else:
        preset = "tiny" if has_preset(method, "tiny") else None
        config = method_config(method, preset, {**SETTINGS, **EXTRA_SETTINGS.get(method, {})})
    histories: list[list[dict]] = []
    original_run = Trainer.run

    def recording_run(self, *args, **kwargs):  # run_erasure keeps the trainer's history to itself
        history = original_run(self, *args, **kwargs)
        histories.append([dict(record) for record in history])
        return history

    Trainer.run = recording_run
    try:
        result = run_erasure(model, method, list(world.pairs), config, list(world.retain), progress=False)
    finally:
        Trainer.run = original_run
    assert len(histories) == (0 if method == "uce" else 1)
    records = [{k: v for k, v in r.items() if k != "step"} for r in (histories[0] if histories else [])]
    assert [r["step"] for r in (histories[0] if histories else [])] == list(range(1, len(records) + 1))
    return result, records


def measure(model, method: str) -> dict:
    """The figures recorded for ``method``: loss curve and total edit norm (trained) or per-delta norms (UCE)."""
    result, records = erase(model, method)
    norms = edit_delta_norms(result.model.edit)
    if method == "uce":
        return {"delta_norms": norms}
    return {"losses": records, "delta_norm": math.sqrt(sum(v * v for v in norms.values()))}


@pytest.fixture(scope="module")
def shipped_tiny():
    from varerase.models.registry import load_model

    return load_model("tiny")


def _recorded() -> dict:
    recorded = json.loads(RECORDED.read_text())
    assert (recorded["concept"], recorded["settings"], recorded["extra_settings"]) == (CONCEPT, SETTINGS, EXTRA_SETTINGS), "settings changed: re-record"
    return recorded["methods"]


def assert_edit_changes_base(result, base) -> None:
    edit = result.model.edit
    params = dict(base.named_parameters())
    merged = edit.changed_weights(base)
    assert any(not torch.equal(merged[name], params[name].detach().float()) for name in edit.names), "the edit equals the base model"


@pytest.mark.parametrize("method", TRAINED)
def test_loss_curve_matches_recording(shipped_tiny, method):
    expected = _recorded()[method]
    result, records = erase(shipped_tiny, method)
    assert_edit_changes_base(result, shipped_tiny)
    assert len(records) == len(expected["losses"]) == STEPS
    names = sorted(expected["losses"][0])
    assert all(sorted(r) == names for r in records), f"loss names changed: {sorted(records[0])} vs recorded {names}"
    got = np.array([[r[n] for n in names] for r in records])
    want = np.array([[r[n] for n in names] for r in expected["losses"]])
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{method} losses {names} (rows: steps 1..{STEPS})")
    norms = edit_delta_norms(result.model.edit)
    total = math.sqrt(sum(v * v for v in norms.values()))
    assert total > 0
    np.testing.assert_allclose(total, expected["delta_norm"], rtol=RTOL, atol=ATOL, err_msg=f"{method} final edit norm")


def test_uce_edit_matches_recording(shipped_tiny):
    expected = _recorded()["uce"]["delta_norms"]
    result, records = erase(shipped_tiny, "uce")
    assert records == []  # closed form: no training steps
    assert_edit_changes_base(result, shipped_tiny)
    norms = edit_delta_norms(result.model.edit)
    assert sorted(norms) == sorted(expected)
    assert all(v > 0 for v in norms.values())
    names = sorted(expected)
    np.testing.assert_allclose([norms[n] for n in names], [expected[n] for n in names], rtol=RTOL, atol=ATOL, err_msg=f"uce delta norms of {names}")


if __name__ == "__main__":  # re-record (see the module docstring): prints the JSON for tests/data/loss_curves.json
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(1)  # as tests/conftest.py
    from varerase.models.registry import load_model

    tiny = load_model("tiny")
    recorded = {
        "concept": CONCEPT,
        "settings": SETTINGS,
        "extra_settings": EXTRA_SETTINGS,
        "methods": {method: measure(tiny, method) for method in (*TRAINED, "uce")},
    }
    print(json.dumps(recorded, indent=1))
