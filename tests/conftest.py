"""Shared fixtures: tiny randomly initialised models (no network, no training)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from varerase.evaluation.detectors.base import ConceptDetector

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models are fastest on one thread, and two threads spin-wait badly on shared cores.
torch.set_num_threads(1)

TINY_SCHEDULE = [(1, 1), (2, 2), (3, 3), (4, 4)]


def tiny_transformer_config(**overrides):
    from varerase.models.infinity.transformer import InfinityConfig

    settings = dict(
        depth=2,
        width=64,
        num_heads=4,
        mlp_ratio=2.0,
        ffn_multiple=32,
        text_channels=32,
        text_max_length=8,
        text_pool_heads=2,
        bits=6,
        schedule=TINY_SCHEDULE,
        block_chunks=2,
    )
    settings.update(overrides)
    return InfinityConfig(**settings)


def random_condition(batch: int, channels: int = 32, tokens: int = 5, seed: int = 0):
    from varerase.models.base import TextCondition

    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, tokens, channels, generator=g)
    lengths = torch.randint(1, tokens + 1, (batch,), generator=g)
    lengths[0] = tokens
    mask = torch.arange(tokens)[None, :] < lengths[:, None]
    return TextCondition(features, mask)


@pytest.fixture
def tiny_model():
    """A randomly initialised Infinity model (transformer only, no VAE or text encoder)."""
    from varerase.models.infinity.model import InfinityModel
    from varerase.models.infinity.transformer import InfinityTransformer

    torch.manual_seed(0)
    transformer = InfinityTransformer(tiny_transformer_config())
    return InfinityModel(transformer, vae=None, text_encoder=None).eval()


class WordHashEncoder(torch.nn.Module):
    """A deterministic stand-in text encoder: one fixed random vector per word (no download)."""

    def __init__(self, channels: int = 32, max_length: int = 8) -> None:
        super().__init__()
        self.channels, self.max_length = channels, max_length

    def _vector(self, word: str) -> torch.Tensor:
        import zlib

        return torch.randn(self.channels, generator=torch.Generator().manual_seed(zlib.crc32(word.encode())))

    def encode(self, prompts):
        from varerase.models.base import TextCondition

        words = [p.lower().split()[: self.max_length] or ["<empty>"] for p in prompts]
        longest = max(len(w) for w in words)
        features = torch.zeros(len(prompts), longest, self.channels)
        mask = torch.zeros(len(prompts), longest, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                features[i, j] = self._vector(w)
                mask[i, j] = True
        return TextCondition(features, mask)


@pytest.fixture
def tiny_text_model():
    """Tiny random Infinity with a word-hash text encoder: enough for methods to run end to end."""
    from varerase.models.infinity.model import InfinityModel
    from varerase.models.infinity.transformer import InfinityTransformer

    torch.manual_seed(0)
    return InfinityModel(InfinityTransformer(tiny_transformer_config()), vae=None, text_encoder=WordHashEncoder()).eval()


class FunctionDetector(ConceptDetector):
    """A stand-in detector: every concept in ``concepts`` gets the score ``score(images)`` ``[B]``."""

    name = "function"

    def __init__(self, score, concepts=None) -> None:
        from varerase.data.world import SYNONYMS

        concepts = tuple(SYNONYMS) if concepts is None else concepts
        self.score, self._concepts = score, tuple(concepts)

    @property
    def concepts(self) -> tuple[str, ...]:
        return self._concepts

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {concept: self.score(images) for concept in self.concepts}

    def weights_hash(self) -> str:
        return "none"


# --- the command line in this process (bad-input and run-integrity tests) ---------------------


def cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    """``varerase ARGS`` through ``main``: (exit code, what it wrote to stderr)."""
    argv, sys.argv = sys.argv, ["varerase", *map(str, args)]
    try:
        from varerase.cli import main

        main()
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model is a test failure: the case must be refused before that work."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr("varerase.api.load_model", refuse)


def refused(capsys: pytest.CaptureFixture, args: list[object], message: str) -> str:
    code, err = cli(capsys, *args)
    assert code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err
