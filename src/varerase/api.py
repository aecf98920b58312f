"""varerase's verbs as Python functions; the command line is a thin shell over these.

    import varerase.api as ve
    result = ve.erase("tiny", method="s-vare", concepts=["circle"], out="runs/circle")
    images = ve.generate("tiny", ["a red circle"], n=4, edit="runs/circle")
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from varerase.data.concepts import world_concept_prompts
from varerase.data.pairs import PromptPair, load_pairs
from varerase.errors import ConfigError
from varerase.methods.registry import method_config
from varerase.methods.runner import ErasureResult, run_erasure
from varerase.models.base import SamplerConfig, ScaleWiseModel
from varerase.models.registry import load_model
from varerase.training.edits import load_edit


def resolve_model(model: str | ScaleWiseModel = "tiny", edit: str | Path | None = None, **model_options: Any) -> ScaleWiseModel:
    """A model object from a name/path (``load_model`` options pass through), with an edit applied if given."""
    if isinstance(model, str):
        model = load_model(model, **{k: v for k, v in model_options.items() if v is not None})
    return load_edit(model, edit) if edit is not None else model


def sampler_for(model: ScaleWiseModel, **overrides: Any) -> SamplerConfig:
    """The model's default sampler with any non-None ``overrides`` (cfg, temperature, top_k, top_p)."""
    base = getattr(model, "default_sampler", SamplerConfig())
    values = asdict(base) | {k: v for k, v in overrides.items() if v is not None}
    return SamplerConfig(**values)


def erasure_prompts(concepts: Sequence[str] = (), pairs: str | Path | Sequence[PromptPair] | None = None) -> tuple[list[PromptPair], list[str]]:
    """Prompt pairs and retain prompts from built-in world concepts and/or a pairs file (or list)."""
    if not concepts and pairs is None:
        raise ConfigError("say what to erase: --concept NAME (built-in world) or --pairs FILE")
    collected: list[PromptPair] = []
    retain: list[str] = []
    if concepts:
        world = world_concept_prompts(concepts)
        collected += world.pairs
        retain += world.retain
    if pairs is not None:
        collected += load_pairs(pairs) if isinstance(pairs, (str, Path)) else list(pairs)
    return collected, retain


def erase(
    model: str | ScaleWiseModel = "tiny",
    method: str = "s-vare",
    concepts: Sequence[str] = (),
    pairs: str | Path | Sequence[PromptPair] | None = None,
    out: str | Path | None = None,
    preset: str | None = None,
    resume: bool = False,
    progress: bool = True,
    model_options: dict[str, Any] | None = None,
    **settings: Any,
) -> ErasureResult:
    """Erase ``concepts`` (world names) and/or the pairs in ``pairs`` from ``model`` with ``method``.

    ``settings`` override the method's config (``steps``, ``lr``, ``batch_size``, ``lora_rank`` …);
    ``out`` is the run directory (``config.yaml``, ``edit.safetensors``, ``state/``, ``metrics.json``).
    """
    config = method_config(method, preset, settings)
    prompt_pairs, retain = erasure_prompts(concepts, pairs)  # bad input fails before a model loads
    loaded = resolve_model(model, **(model_options or {}))
    extra = {"model": model if isinstance(model, str) else type(model).__name__, "concepts": list(concepts), "pairs_file": str(pairs) if isinstance(pairs, (str, Path)) else None, "preset": preset}
    return run_erasure(loaded, method, prompt_pairs, config, retain, run_dir=out, resume=resume, progress=progress, extra_config=extra)


@torch.no_grad()
def generate(
    model: str | ScaleWiseModel = "tiny",
    prompts: Sequence[str] = (),
    n: int = 1,
    seed: int = 0,
    edit: str | Path | None = None,
    batch_size: int = 64,
    model_options: dict[str, Any] | None = None,
    **sampling: Any,
) -> torch.Tensor:
    """``n`` images per prompt, ``[len(prompts)·n, 3, H, W]`` in [0, 1], prompt-major.

    Image ``j`` of prompt ``i`` uses seed ``seed + j``: the same seed gives the same image
    whatever else is in the batch. ``sampling`` overrides cfg/temperature/top_k/top_p.
    """
    if not prompts:
        raise ConfigError("give at least one prompt")
    if n < 1:
        raise ConfigError(f"n must be ≥ 1, got {n}")
    loaded = resolve_model(model, edit, **(model_options or {}))
    sampler = sampler_for(loaded, **sampling)
    rows = [(p, seed + j) for p in prompts for j in range(n)]
    images = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        cond = loaded.encode_text([p for p, _ in chunk])
        images.append(loaded.generate(cond, sampler, seed=[s for _, s in chunk]).images)
    return torch.cat(images)
