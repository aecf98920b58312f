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
from varerase.edits.file_format import load_edit
from varerase.errors import ConfigError
from varerase.methods.registry import has_preset, method_config
from varerase.methods.runner import ErasureResult, run_erasure
from varerase.models.base import SamplerConfig, ScaleWiseModel
from varerase.models.registry import load_model
from varerase.runtime.distributed import DistributedContext
from varerase.training.parallel import ParallelConfig


def resolve_model(model: str | ScaleWiseModel = "tiny", edit: str | Path | None = None, **model_options: Any) -> ScaleWiseModel:
    """A model object from a name/path (``load_model`` options pass through), with an edit applied if given."""
    if isinstance(model, str):
        model = load_model(model, **{k: v for k, v in model_options.items() if v is not None})
    return load_edit(model, edit) if edit is not None else model


def sampler_for(model: ScaleWiseModel, **overrides: Any) -> SamplerConfig:
    """The model's default sampler with any non-None ``overrides`` (cfg, temperature, top_k, top_p)."""
    values = asdict(model.default_sampler) | {k: v for k, v in overrides.items() if v is not None}
    return SamplerConfig(**values)


def _join_ranks(model_options: dict[str, Any] | None):
    """Join torchrun's process group (alone without torchrun) and point ``device="cuda"`` at this rank's GPU."""
    context = DistributedContext.from_environment()
    options = dict(model_options or {})
    if context.is_distributed and str(options.get("device", "cpu")) == "cuda":
        options["device"] = f"cuda:{context.local_rank}"
    return context, options


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
    config_file: str | Path | None = None,
    parallel: str = "ddp",
    activation_checkpointing: bool = False,
    **settings: Any,
) -> ErasureResult:
    """Erase ``concepts`` (world names) and/or the pairs in ``pairs`` from ``model`` with ``method``.

    ``settings`` override the method's config (``steps``, ``lr``, ``batch_size``, ``lora_rank`` …),
    which ``preset`` (default: ``tiny`` for the built-in model, where the method has one) and then
    ``config_file`` (YAML) set first;
    ``out`` is the run directory (``config.yaml``, ``edit.safetensors``, ``state/``, ``metrics.json``).
    ``parallel`` (under torchrun): ``ddp`` replicates the edit on every rank, ``fsdp`` shards it
    (FSDP2), its deltas gathered in the ``autocast_dtype`` of ``model_options`` when one is set.
    ``activation_checkpointing`` recomputes each transformer block in backward instead of keeping
    its activations (less memory, about one more forward per step).
    """
    if preset is None and model == "tiny" and has_preset(method, "tiny"):
        preset = "tiny"  # settings tuned for the built-in model
    config = method_config(method, preset, settings, str(config_file) if config_file else None)
    prompt_pairs, retain = erasure_prompts(concepts, pairs)  # bad input fails before a model loads
    parallel_config = ParallelConfig(parallel, param_dtype=(model_options or {}).get("autocast_dtype"))
    context, options = _join_ranks(model_options)
    loaded = resolve_model(model, **options)
    loaded.set_activation_checkpointing(activation_checkpointing)
    extra = {
        "model": model if isinstance(model, str) else type(model).__name__, "concepts": list(concepts),
        "pairs_file": str(pairs) if isinstance(pairs, (str, Path)) else None, "preset": preset,
        "parallel": asdict(parallel_config), "activation_checkpointing": activation_checkpointing,
    }
    return run_erasure(loaded, method, prompt_pairs, config, retain, run_dir=out, resume=resume, progress=progress, extra_config=extra, context=context, parallel=parallel_config)


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
    rows = [(p, seed + j) for p in prompts for j in range(n)]
    return loaded.generate_images([p for p, _ in rows], [s for _, s in rows], sampler_for(loaded, **sampling), batch_size)


def evaluation_prompt_groups(concepts: Sequence[str] = (), prompts_file: str | Path | None = None, max_per_group: int | None = None) -> dict:
    """Prompt groups to evaluate on: the world's groups for ``concepts`` and/or a user CSV (I2P, Six-CD, COCO)."""
    from varerase.evaluation.prompts import group_prompts, load_prompt_csv, world_prompt_groups

    if not concepts and prompts_file is None:
        raise ConfigError("say what to evaluate: --concept NAME (built-in world) or --prompts FILE")
    groups: dict = {}
    if prompts_file is not None:
        groups.update(group_prompts(load_prompt_csv(prompts_file, limit=max_per_group)))
    if concepts and prompts_file is None:
        groups.update(world_prompt_groups(concepts, max_per_group))
    return groups


def evaluate(
    model: str | ScaleWiseModel = "tiny",
    edit: str | Path | None = None,
    concepts: Sequence[str] = (),
    prompts_file: str | Path | None = None,
    out: str | Path = "runs/eval",
    detector: str = "world",
    clip_model: str | None = None,
    threshold: float | None = None,
    samples_per_prompt: int = 2,
    max_per_group: int | None = 24,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    model_options: dict[str, Any] | None = None,
    **sampling: Any,
) -> dict:
    """Generate, detect and score; with ``edit``, compare the edited model against the original.

    Writes ``metrics.json`` (every figure and setting), image grids and ``report.html`` into ``out``.
    """
    from varerase.evaluation.detectors.registry import load_detector
    from varerase.evaluation.evaluate import evaluate as run_evaluation
    from varerase.evaluation.report import build_report

    groups = evaluation_prompt_groups(concepts, prompts_file, max_per_group)
    context, options = _join_ranks(model_options)
    loaded = resolve_model(model, **options)
    scorer = load_detector(detector, list(concepts), clip_model, threshold)
    measured = list(concepts) or list(scorer.concepts)
    edited = load_edit(loaded, edit) if edit is not None else None
    metrics = run_evaluation(
        edited or loaded, groups, scorer, sampler_for(loaded, **sampling), samples_per_prompt, batch_size, seed, out,
        measured, reference_model=loaded if edited is not None else None, progress=progress, context=context,
    )
    if context.is_main:
        build_report(out)
    return metrics


def attack(
    model: str | ScaleWiseModel = "tiny",
    edit: str | Path | None = None,
    name: str = "paraphrase",
    concept: str = "circle",
    out: str | Path = "runs/attack",
    detector: str = "world",
    clip_model: str | None = None,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    model_options: dict[str, Any] | None = None,
):
    """Run attack ``name`` against the (edited) model; writes ``attack.json`` and images into ``out``.

    Under ``torchrun`` the ranks share the work (each loads the model onto its own GPU); rank 0 writes.
    """
    from varerase.evaluation.attacks.registry import run_attack
    from varerase.evaluation.detectors.registry import load_detector

    context, options = _join_ranks(model_options)
    loaded = resolve_model(model, edit, **options)
    scorer = load_detector(detector, [concept], clip_model)
    return run_attack(name, loaded, concept, scorer, sampler_for(loaded), out, config, progress, context)


def issa(
    model: str | ScaleWiseModel = "tiny",
    edit: str | Path | None = None,
    concept: str = "circle",
    out: str | Path = "runs/issa",
    seeds: int = 8,
    max_pairs: int = 6,
    detector: str | None = "world",
    progress: bool = True,
    model_options: dict[str, Any] | None = None,
):
    """ISSA (METHODS.md §5) for a world concept's pairs: presence curve, per-scale saliency, KL; written into ``out``.

    Under ``torchrun`` the ranks share the pairs out (each loads the model onto its own GPU); rank 0 writes.
    """
    from varerase.evaluation.detectors.registry import load_detector
    from varerase.evaluation.issa import run_issa

    prompt_pairs = list(world_concept_prompts([concept]).pairs)
    chosen = prompt_pairs[:: max(1, len(prompt_pairs) // max_pairs)][:max_pairs]
    context, options = _join_ranks(model_options)
    loaded = resolve_model(model, edit, **options)
    scorer = load_detector(detector, [concept]) if detector else None
    return run_issa(loaded, chosen, scorer, concept if scorer else None, sampler_for(loaded), list(range(seeds)), out, progress, context)
