"""Bad input, table by table: every value a user can get wrong ends in one line that says what to do.

The command line runs in this process through ``varerase.cli.main`` (its error handling
included), so a case costs no interpreter start. Most cases must fail before any model loads:
the ``no_model`` fixture makes loading one an AssertionError, which ``main`` does not catch.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

import varerase.api as ve
from conftest import cli, refused
from varerase.data.pairs import PromptPair
from varerase.errors import CheckpointError, ConfigError, DataError
from varerase.methods.registry import method_config

# --- refused before any model loads ---------------------------------------------------------

PROMPT_CSV = "prompt,seed\na red circle,{seed}\n"
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n" \
             "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"

CLI_CASES = {
    # 9: sampling values
    "cfg nan": (["generate", "-p", "a red circle", "--cfg", "nan"], "cfg must be a finite number"),
    "cfg inf": (["generate", "-p", "a red circle", "--cfg", "inf"], "cfg must be a finite number"),
    "cfg 1e309": (["generate", "-p", "a red circle", "--cfg", "1e309"], "cfg must be a finite number"),
    "cfg huge": (["generate", "-p", "a red circle", "--cfg", "1e300"], "cfg must be ≤ 1000"),
    "temperature nan": (["generate", "-p", "a red circle", "--temperature", "nan"], "temperature must be a finite number"),
    "temperature 0": (["generate", "-p", "a red circle", "--temperature", "0"], "temperature must be > 0"),
    "top-p nan": (["generate", "-p", "a red circle", "--top-p", "nan"], "top_p must be a finite number"),
    "evaluate cfg nan": (["evaluate", "--concept", "circle", "--cfg", "nan", "--out", "{tmp}/e"], "cfg must be a finite number"),
    # 9: seeds
    "generate seed 2**64": (["generate", "-p", "a red circle", "--seed", str(2**64)], "must be in [0, 2**64)"),
    "generate seed + n past 2**64": (["generate", "-p", "a red circle", "-n", "4", "--seed", str(2**64 - 2)], "(and the 3 after it)"),
    "erase seed 2**64": (["erase", "--concept", "circle", "--seed", str(2**64), "--out", "{tmp}/r"], "seed 18446744073709551616 must be in [0, 2**64)"),
    "erase set aux_seed": (["erase", "--concept", "circle", "--set", f"aux_seed={2**70}", "--out", "{tmp}/r"], "aux_seed"),
    "evaluate seed 2**64": (["evaluate", "--concept", "circle", "--seed", str(2**64), "--out", "{tmp}/e"], "must be in [0, 2**64)"),
    "train-tiny seed 2**64": (["train-tiny", "--seed", str(2**64), "--out", "{tmp}/t"], "must be in [0, 2**64)"),
    "csv seed inf": (["evaluate", "--prompts", "{tmp}/inf.csv", "--out", "{tmp}/e"], "seed 'inf' must be a non-negative integer below 2**64"),
    "csv seed nan": (["evaluate", "--prompts", "{tmp}/nan.csv", "--out", "{tmp}/e"], "seed 'nan' must be a non-negative integer below 2**64"),
    "csv seed 1e30": (["evaluate", "--prompts", "{tmp}/1e30.csv", "--out", "{tmp}/e"], "seed '1e30' must be a non-negative integer below 2**64"),
    # 9: devices
    "device foo": (["generate", "-p", "a red circle", "--device", "foo"], "unknown device 'foo'"),
    "device cuda:x": (["erase", "--concept", "circle", "--device", "cuda:x", "--out", "{tmp}/r"], "unknown device 'cuda:x'"),
    # 9: sizes beyond sane bounds, optimiser settings
    "set batch_size 100000": (["erase", "--concept", "circle", "--set", "batch_size=100000", "--out", "{tmp}/r"], "batch_size must be in [1, 1024]"),
    "batch-size flag 100000": (["erase", "--concept", "circle", "--batch-size", "100000", "--out", "{tmp}/r"], "batch_size must be in [1, 1024]"),
    "sace benign_batch_size": (
        ["erase", "--concept", "circle", "--method", "sace", "--set", "benign_batch_size=100000", "--out", "{tmp}/r"], "benign_batch_size must be in"
    ),
    # SACE's confined scales (issue 15)
    "sace scales 1-3": (["erase", "--concept", "circle", "--method", "sace", "--set", "scales=1-3", "--out", "{tmp}/r"], "confined scales start at 0"),
    "sace scales 2": (["erase", "--concept", "circle", "--method", "sace", "--set", "scales=2", "--out", "{tmp}/r"], "write scales=0-2"),
    "sace scales word": (["erase", "--concept", "circle", "--method", "sace", "--set", "scales=some", "--out", "{tmp}/r"], "or auto; got 'some'"),
    "sace auto without a world model": (
        ["erase", "--model", "infinity-2b", "--concept", "circle", "--method", "sace", "--set", "scales=auto", "--out", "{tmp}/r"],
        "pass --issa DIR",
    ),
    "issa for another method": (["erase", "--concept", "circle", "--issa", "{tmp}", "--out", "{tmp}/r"], "--method s-vare does not read it"),
    "issa folder without results": (["erase", "--concept", "circle", "--method", "sace", "--issa", "{tmp}", "--out", "{tmp}/r"], "no ISSA results at"),
    "evaluate batch-size 100000": (["evaluate", "--concept", "circle", "--batch-size", "100000", "--out", "{tmp}/e"], "batch_size must be in [1, 1024]"),
    "betas [2,3]": (["erase", "--concept", "circle", "--set", "betas=[2,3]", "--out", "{tmp}/r"], "betas must be two numbers in [0, 1)"),
    "betas [0.9,1]": (["erase", "--concept", "circle", "--set", "betas=[0.9,1]", "--out", "{tmp}/r"], "betas must be two numbers in [0, 1)"),
    "grad_clip .nan": (["erase", "--concept", "circle", "--set", "grad_clip=.nan", "--out", "{tmp}/r"], "grad_clip must be a finite number"),
    "lr .inf": (["erase", "--concept", "circle", "--set", "lr=.inf", "--out", "{tmp}/r"], "lr must be a finite number"),
    "generation_cfg huge": (["erase", "--concept", "circle", "--set", "generation_cfg=1e300", "--out", "{tmp}/r"], "generation_cfg must be ≤ 1000"),
    # 10: detector thresholds
    "threshold nan": (["evaluate", "--concept", "circle", "--threshold", "nan", "--out", "{tmp}/e"], "threshold must be a finite number"),
    "threshold 2": (["evaluate", "--concept", "circle", "--threshold", "2", "--out", "{tmp}/e"], "threshold must be in [0.0, 1.0]"),
    "threshold -1": (["evaluate", "--concept", "circle", "--threshold", "-1", "--out", "{tmp}/e"], "threshold must be in [0.0, 1.0]"),
    "detector typo": (["evaluate", "--concept", "circle", "--detector", "wrld", "--out", "{tmp}/e"], "did you mean 'world'?"),
    # 12: counts refused before work
    "issa pairs 0": (["analyze", "issa", "--pairs", "0", "--out", "{tmp}/i"], "max_pairs (--pairs) must be ≥ 1"),
    "issa seeds 0": (["analyze", "issa", "--seeds", "0", "--out", "{tmp}/i"], "seeds must be in [1, 1024]"),
    "benchmark samples 0": (["benchmark", "--samples", "0", "--out", "{tmp}/b"], "samples_per_prompt (--samples) must be in [1, 1024]"),
    "benchmark max-per-group 0": (["benchmark", "--max-per-group", "0", "--out", "{tmp}/b"], "max_per_group must be ≥ 1"),
    "benchmark no concepts": (["benchmark", "--concepts", "", "--out", "{tmp}/b"], "unknown concept ''"),
    "evaluate samples 0": (["evaluate", "--concept", "circle", "--samples", "0", "--out", "{tmp}/e"], "samples_per_prompt must be in [1, 1024]"),
    "evaluate max-per-group 0": (["evaluate", "--concept", "circle", "--max-per-group", "0", "--out", "{tmp}/e"], "max_per_group must be ≥ 1"),
    "train-tiny steps -5": (["train-tiny", "--transformer-steps", "-5", "--out", "{tmp}/t"], "transformer_steps must be ≥ 1"),
    "train-tiny unknown setting": (["train-tiny", "--set", "transformer.wdth=3", "--out", "{tmp}/t"], "transformer: unknown setting(s) ['wdth']"),
    "train-tiny setting not a group": (["train-tiny", "--set", "seed.x=1", "--out", "{tmp}/t"], "'seed' is not a group of settings"),
    "train-tiny device": (["train-tiny", "--device", "cuda:x", "--out", "{tmp}/t"], "unknown device 'cuda:x'"),
    "train-tiny world seed": (["train-tiny", "--set", "world.seed=3", "--out", "{tmp}/t"], "set seed instead"),
    "train-tiny world size": (["train-tiny", "--set", "world.image_size=48", "--out", "{tmp}/t"], "drawn at 32 px"),
    "train-tiny world fraction": (["train-tiny", "--set", "world.two_object_fraction=1.5", "--out", "{tmp}/t"], "two_object_fraction must be in [0, 1]"),
    "generate n 0": (["generate", "-p", "a red circle", "-n", "0"], "n must be ≥ 1"),
    # 13: YAML aliases
    "alias bomb in --config": (["erase", "--concept", "circle", "--config", "{tmp}/bomb.yaml", "--out", "{tmp}/r"], "YAML aliases (*a) are not allowed"),
    "alias in --set": (["erase", "--concept", "circle", "--set", "groups=*a", "--out", "{tmp}/r"], "YAML aliases (*a) are not allowed"),
}


@pytest.fixture
def input_files(tmp_path):
    for seed in ("inf", "nan", "1e30"):
        (tmp_path / f"{seed}.csv").write_text(PROMPT_CSV.format(seed=seed))
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)
    return tmp_path


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_command_line_values_are_refused_before_any_work(case, capsys, no_model, input_files):
    args, message = CLI_CASES[case]
    err = refused(capsys, [str(a).replace("{tmp}", str(input_files)) for a in args], message)
    assert len(err) < 400, err
    assert not any((input_files / name).exists() for name in ("r", "e", "i", "b", "t")), "a run folder was written"


def test_alias_bomb_error_is_short(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 260
    with pytest.raises(ConfigError, match="aliases") as error:
        method_config("s-vare", config_file=str(path))
    assert len(str(error.value)) < 300


def test_cuda_on_a_cpu_only_torch_says_so(capsys, no_model):
    if torch.cuda.is_available():
        pytest.skip("this torch sees a GPU")
    refused(capsys, ["generate", "-p", "a red circle", "--device", "cuda"], "use --device cpu")


@pytest.mark.parametrize("form", ["set", "yaml", "nested yaml"])
def test_numbers_written_with_an_exponent_are_numbers(tmp_path, form):
    from varerase.config import parse_assignments

    if form == "set":
        config = method_config("s-vare", overrides=parse_assignments(["lr=1e-4", "grad_clip=5E0"]))
    else:
        path = tmp_path / "settings.yaml"
        path.write_text("lr: 1e-4\ngrad_clip: 5E0\n" if form == "yaml" else "training:\n  lr: 1e-4\n  grad_clip: 5E0\n")
        config = method_config("s-vare", config_file=str(path))
    assert config.training.lr == 1e-4 and config.training.grad_clip == 5.0


def test_any_error_message_is_cut_to_a_readable_length(capsys, monkeypatch):
    def long_failure(*args, **kwargs):
        raise ConfigError("x" * 100_000)

    monkeypatch.setattr(ve, "report", long_failure)
    code, err = cli(capsys, "report", "somewhere")
    assert code == 2 and 100 < len(err) < 2100


def test_ctrl_c_exits_130_and_says_how_to_continue(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ve, "generate", interrupted)
    code, err = cli(capsys, "generate", "-p", "a red circle")
    assert code == 130 and "interrupted" in err and "--resume" in err


# --- the Python API: the same one-line errors, and no string split into characters --------------

API_CASES = {
    "n as a string": (lambda: ve.generate("tiny", ["a red circle"], n="2"), ConfigError, "n must be an integer, got '2'"),
    "model None": (lambda: ve.generate(None, ["a red circle"]), ConfigError, "model must be a string or a ScaleWiseModel, got None"),
    "unknown keyword": (lambda: ve.evaluate("tiny", concept=["circle"]), ConfigError, "['concept']; did you mean 'concepts'?"),
    "unknown keyword, no **kwargs": (lambda: ve.issa("tiny", seed=3), ConfigError, "issa() got an unknown argument 'seed'; did you mean 'seeds'?"),
    "unknown sampling keyword": (lambda: ve.generate("tiny", ["a red circle"], nn=2), ConfigError, "setting(s) ['nn']; did you mean 'n'?"),
    "too many positionals": (lambda: ve.erase("tiny", "vare"), ConfigError, "too many positional arguments"),
    "concepts a string, misspelt": (lambda: ve.erase(concepts="circel", out="x"), ConfigError, "unknown concept 'circel'"),
    "pair of one string": (lambda: ve.erase(pairs=[("a",)], out="x"), DataError, "a prompt pair is a PromptPair"),
    "pair of numbers": (lambda: ve.erase(pairs=[(1, 2)], out="x"), DataError, "a prompt pair is a PromptPair"),
    "seed float": (lambda: ve.generate("tiny", ["a"], seed=1.5), ConfigError, "seed must be an integer"),
    "out a number": (lambda: ve.evaluate("tiny", concepts=["circle"], out=3), ConfigError, "out must be a string or a path, got 3"),
    "model options not a mapping": (lambda: ve.generate("tiny", ["a"], model_options=3), ConfigError, "model_options must be"),
    "model option unknown": (lambda: ve.generate("tiny", ["a"], model_options={"devic": "cpu"}), ConfigError, "unknown model option(s) ['devic']"),
    "device not a string": (lambda: ve.generate("tiny", ["a"], model_options={"device": 0}), ConfigError, "model option device must be a string"),
    "threshold 2": (lambda: ve.evaluate("tiny", concepts=["circle"], threshold=2.0), ConfigError, "threshold must be in [0.0, 1.0]"),
    "issa max_pairs 0": (lambda: ve.issa("tiny", max_pairs=0), ConfigError, "max_pairs (--pairs) must be ≥ 1"),
    "paraphrases a string": (lambda: ve.evaluate("tiny", concepts=["circle"], paraphrases="yes"), ConfigError, "paraphrases must be"),
    "benchmark max_per_group 0": (lambda: ve.benchmark("tiny", methods=["uce"], max_per_group=0, out="x"), ConfigError, "max_per_group must be ≥ 1"),
    "benchmark methods a string": (lambda: ve.benchmark("tiny", methods="vare", concepts=["nope"], out="x"), ConfigError, "unknown concept 'nope'"),
    "train_tiny steps": (lambda: ve.train_tiny(out="x", transformer_steps=0), ConfigError, "transformer_steps must be ≥ 1"),
    "train_tiny setting ill-typed": (lambda: ve.train_tiny(out="x", settings={"transformer.width": "wide"}), ConfigError, "width must be an integer"),
    "train_tiny settings a list": (lambda: ve.train_tiny(out="x", settings=["width=3"]), ConfigError, "settings must be"),
    "report None": (lambda: ve.report(None), ConfigError, "run must be a string or a path, got None"),
    "cfg a string": (lambda: ve.generate("tiny", ["a"], cfg="3"), ConfigError, "cfg must be a number or a list of numbers"),
    "no prompts": (lambda: ve.generate("tiny", []), ConfigError, "give at least one prompt"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_bad_api_arguments_raise_one_line_varerase_errors(case, no_model):
    call, kind, message = API_CASES[case]
    with pytest.raises(kind) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_a_string_where_a_list_is_expected_is_one_item():
    pairs, _ = ve.erasure_prompts("circle")
    assert pairs == ve.erasure_prompts(["circle"])[0] and pairs
    assert ve.erasure_prompts(pairs=[("a cat", "a dog"), ["a red cat", "a red dog", "cat"]])[0] == [
        PromptPair("a cat", "a dog"), PromptPair("a red cat", "a red dog", "cat")
    ]


def test_generate_takes_one_prompt_as_a_string():
    images = ve.generate("tiny", "a red circle", n=1, progress=False)
    assert images.shape[0] == 1


# --- refused once the model is there ------------------------------------------------------------


def test_lora_rank_beyond_the_smallest_edited_weight_is_refused(capsys, tmp_path):
    err = refused(capsys, ["erase", "--concept", "circle", "--rank", "100000", "--out", tmp_path / "run"], "lora_rank 100000 exceeds")
    assert "use a rank ≤" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", ['{"stat', "[1, 2]", "\xff\xfe"])
def test_corrupt_run_json_names_the_file(capsys, tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_bytes(content.encode("latin-1"))
    refused(capsys, ["erase", "--concept", "circle", "--resume", "--out", run], f"{run / 'run.json'}")


STATE_DAMAGE = [
    ("progress.json", b'{"step": '),
    ("progress.json", b'{"history": []}'),
    ("progress.json", b'{"step": 1, "history": [3]}'),
    ("optimizer.pt", b"not a pickle"),
    ("module.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage"),
]


@pytest.mark.parametrize("layout", ["unit", "legacy"])
@pytest.mark.parametrize("name, damage", STATE_DAMAGE)
def test_damaged_resumable_state_is_a_checkpoint_error_naming_the_file(tmp_path, name, damage, layout):
    """A damaged file of a state folder fails its manifest; in the flat state of earlier versions, its own reading."""
    from varerase.training.trainer import Trainer, TrainerConfig

    torch.manual_seed(0)
    trainer = Trainer(nn.Linear(3, 2), TrainerConfig(steps=2, checkpoint_every=1), tmp_path, progress=False)
    trainer.save_state()
    unit = tmp_path / "state" / "step-00000000"
    if layout == "legacy":
        for file in unit.iterdir():
            file.rename(tmp_path / "state" / file.name)
        (tmp_path / "state" / "manifest.json").unlink()
        unit.rmdir()
    (unit if layout == "unit" else tmp_path / "state").joinpath(name).write_bytes(damage)
    resumed = Trainer(nn.Linear(3, 2), TrainerConfig(steps=2, checkpoint_every=1), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as error:
        resumed.load_state()
    assert "delete" in str(error.value) and "\n" not in str(error.value)


# --- item 16: a sane grid and the single images, with progress --------------------------------


def test_many_images_give_a_bounded_grid_and_a_folder_of_single_images(tmp_path, capsys):
    from PIL import Image

    from varerase.imaging import MAX_GRID_COLUMNS, MAX_GRID_IMAGES

    code, _ = cli(capsys, "generate", "-p", "a red circle", "-n", MAX_GRID_IMAGES + 2, "--out", tmp_path / "grid.png")
    assert code == 0
    grid = Image.open(tmp_path / "grid.png")
    singles = sorted((tmp_path / "grid").glob("*.png"))
    assert len(singles) == MAX_GRID_IMAGES + 2 and singles[0].name == "p000_i0000.png"
    side = Image.open(singles[0]).size[0]
    assert grid.size[0] < (MAX_GRID_COLUMNS + 1) * 4 * (side + 2) and grid.size[1] < 4 * (side + 2) + 4, grid.size


# --- item 15: a model config far from its weights fails before allocating ------------------------


@pytest.mark.parametrize("section, change", [("transformer", {"width": 32768, "num_heads": 256, "depth": 8}), ("vae", {"base_channels": 1_000_000})])
def test_model_config_beyond_its_weights_fails_before_allocating(tmp_path, section, change):
    import shutil

    from varerase.models.infinity.model import InfinityModel
    from varerase.models.registry import TINY_WEIGHTS

    folder = tmp_path / "model"
    shutil.copytree(TINY_WEIGHTS, folder)
    config = json.loads((folder / "config.json").read_text())
    config[section].update(change)
    (folder / "config.json").write_text(json.dumps(config))
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=f"{section}.safetensors does not match the model"):
        InfinityModel.from_pretrained(folder)
    assert time.perf_counter() - started < 30

