"""Text encoders: the bundled MiniLM offline and a tiny random T5 built on the spot (no network)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from varerase.errors import ConfigError
from varerase.models.text import TextEncoder, TextEncoderConfig, load_minilm, minilm_path

WORDS = "a photo of the red blue green circle square star cat dog on striped background".split()


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        return load_minilm(max_length=16)


def build_tiny_t5(folder: Path) -> Path:
    """Save a randomly initialised 1-layer T5 encoder and a WordLevel tokenizer to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = T5Config(
        d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64, vocab_size=len(vocab),
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    T5EncoderModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny_t5"))


def test_minilm_loads_offline_with_384_channels_and_mask_matching_token_counts(minilm: TextEncoder) -> None:
    prompts = ["a cat", "a photo of a red circle on a striped background"]
    cond = minilm.encode(prompts)
    counts = [len(minilm.tokenizer(p)["input_ids"]) for p in prompts]
    assert minilm.channels == 384
    assert cond.features.shape == (2, max(counts), 384)
    assert cond.features.dtype == torch.float32
    assert cond.mask.dtype == torch.bool
    assert cond.mask.sum(dim=1).tolist() == counts


def test_padding_positions_are_masked(minilm: TextEncoder) -> None:
    cond = minilm.encode(["dog", "a green star on a blue background"])
    n = int(cond.mask[0].sum())
    assert cond.mask[0, :n].all() and not cond.mask[0, n:].any()
    assert cond.mask[1].all()


def test_identical_prompts_give_identical_features(minilm: TextEncoder) -> None:
    cond = minilm.encode(["a red circle", "a blue star on a striped background", "a red circle"])
    assert torch.equal(cond.features[0], cond.features[2])
    assert torch.equal(cond.mask[0], cond.mask[2])


def test_prompt_features_do_not_depend_on_batch_padding(minilm: TextEncoder) -> None:
    alone = minilm.encode(["a red circle"])
    batch = minilm.encode(["a red circle", "a photo of a blue square on a striped background"])
    n = alone.features.shape[1]
    assert batch.features.shape[1] > n
    torch.testing.assert_close(batch.features[0, :n], alone.features[0], atol=1e-5, rtol=0)


def test_encoder_is_frozen_and_stays_in_eval_mode(minilm: TextEncoder) -> None:
    parent = torch.nn.Sequential(minilm)
    parent.train()
    assert not minilm.training and not minilm.model.training
    assert not any(p.requires_grad for p in minilm.parameters())


def test_minilm_path_points_at_a_local_folder() -> None:
    assert (Path(minilm_path()) / "config.json").is_file()


def test_tiny_random_t5_loads_from_local_folder_with_right_shapes(tiny_t5_dir: Path) -> None:
    encoder = TextEncoder.from_pretrained("t5", tiny_t5_dir, max_length=8)
    cond = encoder.encode(["a red circle", "a photo of the blue square"])
    assert encoder.channels == 32
    assert cond.features.shape == (2, 7, 32)  # 6 words + </s>
    assert cond.mask.sum(dim=1).tolist() == [4, 7]
    assert encoder.config == TextEncoderConfig("t5", str(tiny_t5_dir), 8)
    assert encoder.folder == tiny_t5_dir.resolve()


def test_overlong_prompt_warns_once_and_is_truncated(tiny_t5_dir: Path) -> None:
    encoder = TextEncoder.from_pretrained("t5", tiny_t5_dir, max_length=5)
    long_prompt = "a photo of the red blue green circle square"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cond = encoder.encode([long_prompt, "a cat"])
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1
    assert "max_length=5" in messages[0] and "a photo of the" in messages[0]
    assert cond.features.shape == (2, 5, 32)
    assert cond.mask.sum(dim=1).tolist() == [5, 3]


def test_missing_local_folder_raises_config_error_saying_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; pass a folder"):
        TextEncoder.from_pretrained("t5", tmp_path / "nope", max_length=8)


def test_unknown_kind_raises_config_error(tiny_t5_dir: Path) -> None:
    with pytest.raises(ConfigError, match="known: t5, bert"):
        TextEncoder.from_pretrained("clip", tiny_t5_dir, max_length=8)  # type: ignore[arg-type]


def test_fingerprint_depends_on_config(tiny_t5_dir: Path) -> None:
    a = TextEncoder.from_pretrained("t5", tiny_t5_dir, max_length=8)
    b = TextEncoder.from_pretrained("t5", tiny_t5_dir, max_length=8)
    c = TextEncoder.from_pretrained("t5", tiny_t5_dir, max_length=6)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
