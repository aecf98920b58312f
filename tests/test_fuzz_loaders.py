"""Fuzzing the loaders users feed files to: any input ends in a result or a varerase error."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_transformer_config
from varerase.config import load_settings_yaml, parse_assignments
from varerase.edits.file_format import load_edit
from varerase.errors import VarEraseError
from varerase.methods.registry import method_config
from varerase.models.infinity.checkpoint import load_official_transformer
from varerase.models.infinity.model import InfinityModel
from varerase.models.infinity.transformer import InfinityTransformer

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**20) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
setting_names = st.sampled_from(["steps", "lr", "batch_size", "groups", "betas", "lora_rank", "update", "rho", "seed", "grad_clip", "unknown_key"])


@FUZZ
@given(method=st.sampled_from(["vare", "s-vare", "sace", "esd", "naive", "uce"]), overrides=st.dictionaries(setting_names, json_values, max_size=4))
def test_method_settings_load_or_raise_a_varerase_error(method, overrides):
    try:
        method_config(method, overrides=overrides)
    except VarEraseError:
        pass


@FUZZ
@given(text=st.text(max_size=200))
def test_yaml_settings_files_load_or_raise_a_varerase_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "settings.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        method_config("s-vare", config_file=str(path))
    except VarEraseError:
        pass


@FUZZ
@given(value=st.floats(allow_nan=False, allow_infinity=False), form=st.sampled_from(["{!r}", "{:e}", "{:E}", "{:.3e}", "{:g}"]))
def test_numbers_in_settings_read_as_the_numbers_written(value, form):
    text = form.format(value)
    assert parse_assignments([f"lr={text}"])["lr"] == float(text)
    assert load_settings_yaml(f"lr: {text}")["lr"] == float(text)


def test_yaml_never_builds_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("steps: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(VarEraseError):
        method_config("s-vare", config_file=str(path))


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".pth", ".safetensors"]))
def test_official_checkpoint_bytes_load_or_raise_a_varerase_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("ckpt") / f"weights{suffix}"
    path.write_bytes(data)
    with pytest.raises(VarEraseError):
        load_official_transformer(InfinityTransformer(tiny_transformer_config()), path)


@FUZZ
@given(data=st.binary(max_size=300))
def test_edit_files_load_or_raise_a_varerase_error(tiny_model, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("edit") / "edit.safetensors"
    path.write_bytes(data)
    with pytest.raises(VarEraseError):
        load_edit(tiny_model, path)


@FUZZ
@given(config=json_values)
def test_model_folders_with_any_config_load_or_raise_a_varerase_error(tiny_model, tmp_path_factory, config):
    folder = tmp_path_factory.mktemp("model")
    tiny_model.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    saved["transformer"] = config if not isinstance(config, dict) else {**saved["transformer"], **config}
    (folder / "config.json").write_text(json.dumps(saved))
    try:
        InfinityModel.from_pretrained(folder)
    except VarEraseError:
        pass
