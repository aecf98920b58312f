"""Recorded-loss regression: each method's first 10 losses on the shipped tiny model match known values.

Every entry of ``TRAINED`` — a method that trains (vare, s-vare, sace, esd, naive), or a method
with settings of its own in ``EXTRA_SETTINGS`` (``vare-ce``: VARE's ``loss=ce`` at the lr its tiny
preset had, the curve recorded as "vare" before VARE became the paper's MSE, which must stay
reproducible) — runs 10 optimiser steps on the shipped tiny model (``load_model("tiny")``)
erasing the world concept "circle", with its method's ``tiny`` preset and the small fixed
settings in ``SETTINGS``; its per-step losses (the trainer's history) and the norm of its final
edit must equal the values recorded in ``tests/data/loss_curves.json``. UCE (closed form) is
checked by the norm of each delta it writes. Tolerance: rtol 1e-4, atol 1e-6 — tight enough to
catch a changed loss, loose enough for reordered float sums.

Re-record ONLY the entries whose loss (or tiny preset) was changed on purpose — or all of them
when the tiny model or ``SETTINGS`` changed — and say so in the commit:

    .venv/bin/python tests/test_loss_regression.py vare      # only the named entries; the others stay as recorded
    .venv/bin/python tests/test_loss_regression.py           # every entry (and uce)

(the ``__main__`` block below runs the same code on one thread and rewrites the JSON file). A
refactor that should not change the maths must pass this test without re-recording.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

RECORDED = Path(__file__).parent / "data" / "loss_curves.json"
RTOL, ATOL = 1e-4, 1e-6
CONCEPT = "circle"
STEPS = 10
# Recorded entry → the method it runs (with its entry's EXTRA_SETTINGS).
TRAINED = {"vare": "vare", "vare-ce": "vare", "s-vare": "s-vare", "sace": "sace", "esd": "esd", "naive": "naive"}
# Flat overrides on top of each method's ``tiny`` preset (kept fixed: the recorded values depend on them).
SETTINGS = {"steps": STEPS, "batch_size": 2, "samples_per_pair": 1, "seed": 42}
EXTRA_SETTINGS = {"vare-ce": {"loss": "ce", "lr": 1e-3}, "sace": {"benign_batch_size": 2}}


def edit_delta_norms(edit) -> dict[str, float]:
    """``‖Δ‖`` of every parameter the edit changes, by name."""
    with torch.no_grad():
        return {name: float(edit.delta(name).double().norm()) for name in edit.names}


def erase(model, entry: str):
    """Erase ``CONCEPT`` as recorded entry ``entry`` (a method, or see ``TRAINED``); returns ``(result, per-step loss records without "step")``."""
    from varerase.data.concepts import world_concept_prompts
    from varerase.methods.registry import has_preset, method_config
    from varerase.methods.runner import run_erasure
    from varerase.training.trainer import Trainer

    world = world_concept_prompts([CONCEPT])
    method = TRAINED.get(entry, entry)
    if method == "uce":
        config = method_config("uce", None, {"seed": 42})
    else:
        preset = "tiny" if has_preset(method, "tiny") else None
        config = method_config(method, preset, {**SETTINGS, **EXTRA_SETTINGS.get(entry, {})})
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


def measure(model, entry: str) -> dict:
    """The figures recorded for ``entry``: loss curve and total edit norm (trained) or per-delta norms (UCE)."""
    result, records = erase(model, entry)
    norms = edit_delta_norms(result.model.edit)
    if entry == "uce":
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


@pytest.mark.parametrize("entry", TRAINED)
def test_loss_curve_matches_recording(shipped_tiny, entry):
    expected = _recorded()[entry]
    result, records = erase(shipped_tiny, entry)
    assert_edit_changes_base(result, shipped_tiny)
    assert len(records) == len(expected["losses"]) == STEPS
    names = sorted(expected["losses"][0])
    assert all(sorted(r) == names for r in records), f"loss names changed: {sorted(records[0])} vs recorded {names}"
    got = np.array([[r[n] for n in names] for r in records])
    want = np.array([[r[n] for n in names] for r in expected["losses"]])
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{entry} losses {names} (rows: steps 1..{STEPS})")
    norms = edit_delta_norms(result.model.edit)
    total = math.sqrt(sum(v * v for v in norms.values()))
    assert total > 0
    np.testing.assert_allclose(total, expected["delta_norm"], rtol=RTOL, atol=ATOL, err_msg=f"{entry} final edit norm")


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


def rerecord(named: list[str]) -> None:
    """Rewrite ``RECORDED``: every entry measured afresh, or (``named``) only those, the others kept as recorded."""
    from varerase.models.registry import load_model

    entries = [*TRAINED, "uce"]
    old = json.loads(RECORDED.read_text()) if named else {"methods": {}}
    unknown = sorted(set(named) - set(entries))
    if unknown:
        raise SystemExit(f"unknown entries {unknown}; known: {entries}")
    kept = [e for e in entries if e not in named] if named else []  # no names: every entry afresh
    if named and ((old["concept"], old["settings"]) != (CONCEPT, SETTINGS) or any(old["extra_settings"].get(e) != EXTRA_SETTINGS.get(e) for e in kept)):
        raise SystemExit("the settings of entries not named changed since they were recorded: re-record every entry")
    if any(e not in old["methods"] for e in kept):
        raise SystemExit(f"not recorded yet, name them: {[e for e in kept if e not in old['methods']]}")
    tiny = load_model("tiny")
    methods = {e: old["methods"][e] if e in kept else measure(tiny, e) for e in entries}
    recorded = {"concept": CONCEPT, "settings": SETTINGS, "extra_settings": EXTRA_SETTINGS, "methods": methods}
    RECORDED.write_text(json.dumps(recorded, indent=1) + "\n")


if __name__ == "__main__":  # re-record (see the module docstring)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(1)  # as tests/conftest.py
    rerecord(sys.argv[1:])
