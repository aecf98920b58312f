"""No file runs code, and outputs stay inside the folder the user chose."""

from __future__ import annotations

import re
from pathlib import Path

from varerase import api

SOURCE = Path(__file__).resolve().parent.parent / "src" / "varerase"


def test_weights_and_yaml_are_only_loaded_safely():
    for path in SOURCE.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text), path
        assert "pickle.load" not in text, path


def test_evaluation_outputs_stay_inside_the_chosen_folder(tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,concept\na red circle,../../escape\na blue square,/etc/passwd\n")
    out = tmp_path / "inside" / "eval"
    api.evaluate("tiny", prompts_file=prompts, out=out, samples_per_prompt=1, progress=False)
    written = {p.resolve() for p in tmp_path.rglob("*") if p.is_file()} - {prompts.resolve()}
    assert written and all(out.resolve() in p.parents for p in written), sorted(map(str, written))
