"""The command line as a user meets it: help, errors with exit code 2, generate and erase on the built-in model."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
import yaml
from typer.testing import CliRunner

from varerase.cli import app

runner = CliRunner()


def _varerase(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "varerase", *args], capture_output=True, text=True, timeout=600)


def _edit_changes_the_base(run) -> bool:
    """Whether the run's ``edit.safetensors`` changes the shipped tiny model at all (some delta non-zero)."""
    from varerase.edits.file_format import load_edit
    from varerase.models.registry import load_model

    edit = load_edit(load_model("tiny"), run).edit
    with torch.no_grad():
        return any(edit.delta(name).abs().max() > 0 for name in edit.names)


def test_help_lists_the_verbs():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("demo", "erase", "generate", "train-tiny"):
        assert verb in result.output


def test_unknown_concept_fails_with_a_suggestion_and_exit_code_2(tmp_path):
    result = _varerase("erase", "--concept", "circel", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "did you mean 'circle'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_nonsensical_flags_are_refused(tmp_path):
    result = _varerase("erase", "--concept", "circle", "--steps", "0", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "steps must be ≥ 1" in result.stderr and not (tmp_path / "run").exists()
    result = _varerase("generate", "-p", "a red circle", "--cfg", "-1", "--out", str(tmp_path / "g.png"))
    assert result.returncode == 2 and "cfg must be ≥ 0" in result.stderr
    result = _varerase("erase", "--concept", "circle", "--parallel", "zero3", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "'ddp' or 'fsdp'" in result.stderr and not (tmp_path / "run").exists()


def test_malformed_pairs_file_names_file_and_line(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"original_prompt": "a", "modified_prompt": "b"}\n{"original_prompt": "c"}\n')
    result = _varerase("erase", "--pairs", str(pairs), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "pairs.jsonl" in result.stderr and "line 2" in result.stderr


def test_generate_writes_a_grid_and_is_deterministic(tmp_path):
    from PIL import Image

    for name in ("a.png", "b.png"):
        result = runner.invoke(app, ["generate", "-p", "a red star on a striped background", "-n", "3", "--seed", "5", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert a.size[0] > a.size[1] and a.tobytes() == b.tobytes()


def test_erase_then_generate_with_the_edit(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["erase", "--concept", "circle", "--method", "sace", "--steps", "3", "--out", str(run)])
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "edit.safetensors", "metrics.json", "run.json"):
        assert (run / name).exists()
    assert _edit_changes_the_base(run)
    result = runner.invoke(app, ["generate", "-p", "a red circle", "-n", "2", "--edit", str(run), "--out", str(tmp_path / "after.png")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["erase", "--concept", "circle", "--method", "sace", "--steps", "3", "--out", str(run)])
    assert result.exit_code != 0  # a finished run is not overwritten

    evaluation = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--edit", str(run), "--concept", "circle", "--samples", "1", "--max-per-group", "2", "--out", str(evaluation)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert {"before", "after", "comparison"} <= set(metrics)
    assert metrics["settings"]["detector"]["threshold"] == 0.5
    assert "<img" in (evaluation / "report.html").read_text()
    (evaluation / "report.html").unlink()
    assert runner.invoke(app, ["report", str(evaluation)]).exit_code == 0
    assert (evaluation / "report.html").exists()


def test_demo_prints_before_after_and_writes_the_grid(tmp_path):
    result = runner.invoke(app, ["demo", "--steps", "5", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "present on prompts naming it" in result.output and "100%" in result.output
    assert (tmp_path / "demo" / "before_after.png").exists()
    assert _edit_changes_the_base(tmp_path / "demo" / "run")
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert summary["presence_before"] >= 0.9 and summary["concept"] == "circle"


def test_benchmark_writes_table_results_and_plot(tmp_path):
    out = tmp_path / "bench"
    result = runner.invoke(app, ["benchmark", "--concepts", "striped", "--methods", "uce", "--samples", "1", "--max-per-group", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())
    assert [(r["concept"], r["method"]) for r in rows] == [("striped", "uce")]
    assert rows[0]["target_presence"][0] == 1.0 and rows[0]["forward_tokens"] > 0
    assert rows[0]["intervals"]["target_presence"]["after"]["n"] == 3 and len(rows[0]["intervals"]["retain_following"]["after"]["ci95"]) == 2
    assert rows[0]["distances"]["retain_vs_truth"]["after"]["num_real"] == 3 and rows[0]["distances"]["retain_vs_before"]["num_fake"] == 3
    table = (out / "results.md").read_text()
    assert "| striped | uce |" in table and "retain vs truth, before → after (world_detector features, KID unscaled)" in table
    assert "Wall time:" in table and "95 % Wilson interval" in table
    summary = json.loads((out / "benchmark.json").read_text())
    paraphrases = summary["paraphrase_filters"]["striped"]
    assert summary["wall_seconds"] > 0 and paraphrases["num_candidates"] == 3 >= paraphrases["num_used"]
    settings = json.loads((out / "striped" / "uce" / "eval" / "metrics.json").read_text())["settings"]
    assert len(settings["paraphrase_filter"]["candidates"]) == 3  # the filter's result is recorded with the run
    assert (out / "tradeoff.png").stat().st_size > 1000


def test_set_flags_reach_method_and_attack_settings(tmp_path):
    result = _varerase("erase", "--concept", "red", "--set", "rho=abc", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "rho must be a number" in result.stderr
    budget = ["--set", "search={population: 8, generations: 2}", "--set", "num_prompts=2"]
    result = runner.invoke(app, ["attack", "--attack", "ring-a-bell", *budget, "--out", str(tmp_path / "attack")])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "attack" / "attack.json").read_text())["settings"]
    assert settings["config"]["search"]["population"] == 8 and settings["config"]["num_prompts"] == 2


def test_erase_with_activation_checkpointing_trains_the_same_edit_and_records_it(tmp_path):
    from safetensors.torch import load_file

    common = ["erase", "--concept", "circle", "--method", "s-vare", "--steps", "2", "--batch-size", "2", "--set", "samples_per_pair=1"]
    for name, flags in (("plain", []), ("checkpointed", ["--activation-checkpointing"])):
        result = runner.invoke(app, [*common, *flags, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    plain, checkpointed = (load_file(tmp_path / name / "edit.safetensors") for name in ("plain", "checkpointed"))
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6, rtol=0) for k in plain)
    assert _edit_changes_the_base(tmp_path / "plain") and _edit_changes_the_base(tmp_path / "checkpointed")
    recorded = yaml.safe_load((tmp_path / "checkpointed" / "config.yaml").read_text())
    assert recorded["activation_checkpointing"] is True and recorded["parallel"]["strategy"] == "ddp"



def test_help_names_what_each_flag_accepts_and_every_model_command_takes_the_model_flags():
    from varerase import api

    help_of = {name: runner.invoke(app, [*name.split(), "--help"], terminal_width=400).output for name in
               ("erase", "generate", "evaluate", "attack", "analyze issa", "benchmark", "demo")}
    for method in api.METHOD_NAMES:
        assert method in help_of["erase"] and method in help_of["demo"] and method in help_of["benchmark"]
    assert all(name in help_of["attack"] for name in api.attack_names())
    assert all(name in help_of["evaluate"] for name in api.detector_names())
    for command in ("erase", "generate", "evaluate", "attack", "analyze issa", "benchmark"):
        for flag in ("--checkpoint", "--vae", "--text-encoder", "--device", "--mixed-precision", "--attention"):
            assert flag in help_of[command], (command, flag)


def test_sace_scales_auto_runs_a_small_issa_and_records_the_curves_and_the_choice_in_the_run_folder(tmp_path):
    from varerase.evaluation.issa import IssaCurves

    run = tmp_path / "auto"
    result = runner.invoke(app, ["erase", "--concept", "circle", "--method", "sace", "--set", "scales=auto", "--steps", "1", "--out", str(run)])
    assert result.exit_code == 0, result.output
    curves = IssaCurves.read(run / "issa")  # the ISSA that chose, in the run folder, with both curves
    assert len(curves.switch_in) == len(curves.commit) == 7 and (run / "issa" / "issa.png").exists()
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    k = curves.recommended_last_scale
    assert recorded["method_config"]["edit"]["last_scale"] == k and recorded["scales_auto"]["chosen"] == ("0" if k == 0 else f"0-{k}")
    assert recorded["scales_auto"]["verdict"] == curves.verdict() and "warning" not in result.stderr
    assert curves.prevented_at_scale_0 < 0.5  # the built-in model decides circle late (README)
