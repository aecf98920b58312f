"""A run killed with SIGKILL and resumed ends with the same edit as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from varerase.models.registry import load_model

ARGS = ["erase", "--concept", "red", "--method", "s-vare", "--steps", "60", "--checkpoint-every", "5", "--lr", "1e-3"]


def _command(out) -> list[str]:
    return [sys.executable, "-m", "varerase", *ARGS, "--out", str(out)]


@pytest.mark.slow
def test_sigkill_then_resume_gives_bit_identical_edit(tmp_path):
    subprocess.run(_command(tmp_path / "whole"), check=True, capture_output=True, timeout=900)

    process = subprocess.Popen(_command(tmp_path / "cut"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:  # blocks until the run reports a saved state
        if "saved resumable state at step 10" in line:
            break
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "running"
    assert not (tmp_path / "cut" / "edit.safetensors").exists()

    subprocess.run(_command(tmp_path / "cut") + ["--resume"], check=True, capture_output=True, timeout=900)
    whole, cut = load_file(tmp_path / "whole" / "edit.safetensors"), load_file(tmp_path / "cut" / "edit.safetensors")
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)
    base = dict(load_model("tiny").named_parameters())  # the edit file holds merged weights W + Δ
    assert any(not torch.equal(whole[k], base[k].detach().float()) for k in whole), "the edit equals the base model"
