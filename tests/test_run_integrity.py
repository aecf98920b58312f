"""Run folders never lie about what they hold, and varerase never destroys what the user had.

Each test reproduces one way a run folder, an edit or a user's folder went wrong before: a resume
with other settings, a torn checkpoint, an unfinished or foreign edit, two processes in one
folder, a log that repeats steps, a user's folder written into, an evaluation mixed with an older
one, and ``generate --out`` pointing at a folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import varerase.api as ve
from conftest import refused
from varerase.data.pairs import PromptPair
from varerase.edits.file_format import load_edit
from varerase.errors import CheckpointError, ConfigError
from varerase.methods.registry import method_config
from varerase.methods.runner import run_erasure
from varerase.runtime.output_folders import LOCK_NAME, FolderLock, build_in_place

PAIRS = [PromptPair("a red circle", "a red square"), PromptPair("a blue circle", "a blue star")]
SETTINGS = {"steps": 4, "checkpoint_every": 2, "lr": 1e-2, "batch_size": 2, "samples_per_pair": 1}


def _config(**overrides):
    return method_config("s-vare", overrides={**SETTINGS, **overrides})


def _erase(model, run_dir, config=None, **kwargs):
    return run_erasure(model, "s-vare", PAIRS, config or _config(), run_dir=run_dir, progress=False, **kwargs)


def _crash_at(monkeypatch, step_index):
    """Make S-VARE's step ``step_index`` raise KeyboardInterrupt (as Ctrl-C or a kill would stop it)."""
    from varerase.methods.svare import SVARE

    original = SVARE.step

    def crashing(self, index, update):
        if index == step_index:
            raise KeyboardInterrupt
        return original(self, index, update)

    monkeypatch.setattr(SVARE, "step", crashing)
    return lambda: monkeypatch.setattr(SVARE, "step", original)


def _edits_equal(a, b) -> bool:
    first, second = load_file(a / "edit.safetensors"), load_file(b / "edit.safetensors")
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# --- item 1: resume only with the same settings ------------------------------------------------


def test_resume_with_other_settings_is_refused_naming_them(tiny_text_model, tmp_path):
    _erase(tiny_text_model, tmp_path / "r")
    saved = (tmp_path / "r" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"training\.lr: 0\.01 → 0\.02") as error:
        _erase(tiny_text_model, tmp_path / "r", _config(lr=2e-2, steps=10), resume=True)
    assert "choose another --out" in str(error.value)
    other_pairs = [PromptPair("a red triangle", "a red heart")]
    with pytest.raises(ConfigError, match="pairs differs"):
        run_erasure(tiny_text_model, "s-vare", other_pairs, _config(), run_dir=tmp_path / "r", resume=True, progress=False)
    assert (tmp_path / "r" / "config.yaml").read_text() == saved  # nothing was rewritten


def test_a_finished_run_is_resumed_only_to_extend_it(tiny_text_model, tmp_path):
    _erase(tiny_text_model, tmp_path / "whole", _config(steps=6))
    _erase(tiny_text_model, tmp_path / "r")
    with pytest.raises(ConfigError, match="already holds a finished run; to extend its 4 steps"):
        _erase(tiny_text_model, tmp_path / "r", resume=True)
    with pytest.raises(ConfigError, match=r"training\.steps: 4 → 3"):  # fewer steps than it ran: refused
        _erase(tiny_text_model, tmp_path / "r", _config(steps=3), resume=True)
    result = _erase(tiny_text_model, tmp_path / "r", _config(steps=6), resume=True)
    assert result.metrics["steps"] == 6 and result.metrics["resumed_from_step"] == 4
    assert _edits_equal(tmp_path / "whole", tmp_path / "r")  # extended 4 → 6 equals 6 straight
    recorded = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert recorded["method_config"]["training"]["steps"] == 6
    history = json.loads((tmp_path / "r" / "run.json").read_text())["history"]
    assert [e["event"] for e in history] == ["started", "complete", "resumed", "complete"]
    assert history[2]["changes"] == {"method_config.training.steps": [4, 6]}
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_finished_run_with_the_same_settings_is_reused_not_rerun(tiny_text_model, tmp_path, monkeypatch):
    first = _erase(tiny_text_model, tmp_path / "r")
    _crash_at(monkeypatch, 0)  # a step run again would stop the test
    again = _erase(tiny_text_model, tmp_path / "r", resume=True, reuse_finished=True)
    assert again.metrics == first.metrics
    # The file holds W + Δ in float32, so the Δ read back matches to float32 rounding.
    assert all(torch.allclose(again.model.edit.delta(n), first.model.edit.delta(n), atol=1e-6, rtol=0) for n in first.model.edit.names)


# --- item 2: a checkpoint is one unit ---------------------------------------------------------


def test_a_kill_while_a_state_is_written_leaves_the_previous_state_whole(tiny_text_model, tmp_path, monkeypatch):
    """Killed after the step-4 weights were written but before that state was complete: the step-2 state is used."""
    import varerase.training.checkpoint as checkpoint

    _erase(tiny_text_model, tmp_path / "whole", _config(steps=6))
    original = checkpoint.atomic_write_json

    def killed_at_step_four_manifest(obj, path):
        if path.name == "manifest.json" and obj["step"] == 4:
            raise KeyboardInterrupt
        return original(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_write_json", killed_at_step_four_manifest)
    with pytest.raises(KeyboardInterrupt):
        _erase(tiny_text_model, tmp_path / "cut", _config(steps=6))
    assert (tmp_path / "cut" / "state" / ".step-00000004.partial" / "module.safetensors").exists()  # the torn write
    monkeypatch.setattr(checkpoint, "atomic_write_json", original)
    result = _erase(tiny_text_model, tmp_path / "cut", _config(steps=6), resume=True)
    assert result.metrics["resumed_from_step"] == 2
    assert _edits_equal(tmp_path / "whole", tmp_path / "cut")
    assert sorted(p.name for p in (tmp_path / "cut" / "state").iterdir()) == ["step-00000006"]


# --- item 3: --edit checks the run and the model ----------------------------------------------


def test_the_edit_of_an_unfinished_run_is_refused_unless_forced(tiny_text_model, tmp_path, monkeypatch):
    _erase(tiny_text_model, tmp_path / "r")
    marker = tmp_path / "r" / "run.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "status": "running"}))  # a resume killed mid-run
    for path in (tmp_path / "r", tmp_path / "r" / "edit.safetensors"):
        with pytest.raises(CheckpointError, match="unfinished run .*--force-edit"):
            load_edit(tiny_text_model, path)
    assert load_edit(tiny_text_model, tmp_path / "r", force=True).edit.names


def test_an_edit_made_for_another_model_is_refused_unless_forced(tiny_text_model, tmp_path):
    _erase(tiny_text_model, tmp_path / "r")
    with torch.no_grad():  # same shapes, other weights
        next(tiny_text_model.parameters()).add_(1.0)
    with pytest.raises(CheckpointError, match="made for another model .*--force-edit"):
        load_edit(tiny_text_model, tmp_path / "r")
    assert load_edit(tiny_text_model, tmp_path / "r", force=True).edit.names


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: {k: torch.full_like(v, float("nan")) for k, v in t.items()}, "NaN or infinite"),
        (lambda t: {k: v.to(torch.int32) for k, v in t.items()}, "holds torch.int32 values"),
    ],
)
def test_an_edit_with_bad_tensors_is_a_clear_error(tiny_text_model, tmp_path, damage, message):
    _erase(tiny_text_model, tmp_path / "r")
    path = tmp_path / "r" / "edit.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(damage(tensors), path, metadata=metadata)
    with pytest.raises(CheckpointError, match=message):
        load_edit(tiny_text_model, path, force=True)


@pytest.mark.parametrize("rank", ["abc", "-2", "2.5"])
def test_lora_metadata_that_is_no_positive_number_is_a_clear_error(tiny_text_model, tmp_path, rank):
    _erase(tiny_text_model, tmp_path / "r", _config(lora_rank=2))
    path = tmp_path / "r" / "edit.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors, path, metadata={**metadata, "rank": rank})
    with pytest.raises(CheckpointError, match=f"metadata rank={rank!r}"):
        load_edit(tiny_text_model, path)


# --- item 4: one process per folder -----------------------------------------------------------


def test_a_folder_in_use_by_a_live_process_is_refused(tiny_text_model, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        (tmp_path / "r").mkdir()
        (tmp_path / "r" / LOCK_NAME).write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid}))
        with pytest.raises(ConfigError, match=f"in use by process {holder.pid}"):
            _erase(tiny_text_model, tmp_path / "r")
        assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.communicate(b"")
    # The holder is gone: its lock is stale and taken over; the run releases the lock when done.
    _erase(tiny_text_model, tmp_path / "r")
    assert not (tmp_path / "r" / LOCK_NAME).exists() and (tmp_path / "r" / "edit.safetensors").exists()


def test_the_lock_is_released_when_a_run_stops(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with FolderLock(tmp_path):
            assert (tmp_path / LOCK_NAME).exists()
            with pytest.raises(ConfigError, match=f"in use by process {os.getpid()}"):
                FolderLock(tmp_path).acquire()
            raise KeyboardInterrupt
    assert not (tmp_path / LOCK_NAME).exists()


# --- item 5: the log holds each step once -----------------------------------------------------


def test_a_run_stopped_before_its_first_state_restarts_with_a_fresh_log(tiny_text_model, tmp_path, monkeypatch):
    restore = _crash_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _erase(tiny_text_model, tmp_path / "r", _config(checkpoint_every=10))  # no state saved before step 4
    assert len((tmp_path / "r" / "log.jsonl").read_text().splitlines()) == 3
    restore()
    result = _erase(tiny_text_model, tmp_path / "r", _config(checkpoint_every=10), resume=True)
    assert result.metrics["resumed_from_step"] == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# --- item 6: only our run.json makes a run ----------------------------------------------------


def test_a_users_folder_is_refused_and_left_as_it_was(tiny_text_model, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "metrics.json").write_text('{"mine": 1}')
    (user / "config.yaml").write_text("mine: 1\n")
    for resume in (False, True):
        with pytest.raises(ConfigError, match="not empty and holds no erase run"):
            _erase(tiny_text_model, user, resume=resume)
    assert sorted(p.name for p in user.iterdir()) == ["config.yaml", "metrics.json"]
    (tmp_path / "empty").mkdir()
    _erase(tiny_text_model, tmp_path / "empty")  # an empty folder is fine
    assert (tmp_path / "empty" / "run.json").exists()


@pytest.mark.parametrize("out", [".", "/"])
def test_erase_into_the_working_folder_or_root_is_refused(capsys, no_model, tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    refused(capsys, ["erase", "--concept", "circle", "--resume", "--out", out], "not empty and holds no erase run")


# --- item 7: an evaluation is one folder of its own ---------------------------------------------


def test_evaluate_into_an_erase_run_is_refused_before_work(capsys, no_model, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: s-vare\n")
    (run / "run.json").write_text(json.dumps({"format": "varerase-run", "status": "complete"}))
    refused(capsys, ["evaluate", "--concept", "circle", "--edit", run, "--out", run], f"evaluate into a folder of its own, e.g. --out {run / 'eval'}")


def test_an_evaluation_is_built_apart_and_renamed_into_place(tmp_path):
    target = tmp_path / "eval"
    target.mkdir()
    (target / "metrics.json").write_text("old")
    (target / "grid.png").write_text("old")
    with pytest.raises(KeyboardInterrupt):  # killed while writing: the old evaluation stays whole
        with build_in_place(target) as folder:
            (folder / "metrics.json").write_text("new")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["grid.png", "metrics.json"]
    assert (target / "metrics.json").read_text() == "old"
    with build_in_place(target) as folder:
        (folder / "metrics.json").write_text("new")
    assert [p.name for p in target.iterdir()] == ["metrics.json"] and (target / "metrics.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # no partial or old folder left


# --- item 8: generate --out is checked before work --------------------------------------------


@pytest.mark.parametrize("out, message", [(".", "is a folder"), ("/", "is a folder"), ("{tmp}", "is a folder"), ("{tmp}/grid.jpg", "must name a .png")])
def test_generate_out_that_is_no_png_file_is_refused_before_work(capsys, no_model, tmp_path, out, message):
    refused(capsys, ["generate", "-p", "a red circle", "--out", out.format(tmp=tmp_path)], message)


def test_generate_into_a_folder_that_cannot_be_written_is_refused_before_work(capsys, no_model, tmp_path):
    refused(capsys, ["generate", "-p", "a red circle", "--out", "/proc/grid.png"], "cannot write into /proc")


def test_the_api_checks_generate_out_too(no_model, tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        ve.generate("tiny", ["a red circle"], out=tmp_path)
