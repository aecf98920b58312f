"""varerase's verbs as Python functions: the one front door (the command line is a thin shell over these).

    import varerase.api as ve
    result = ve.erase("tiny", method="s-vare", concepts=["circle"], out="runs/circle")
    images = ve.generate("tiny", ["a red circle"], n=4, edit="runs/circle")

Every verb takes the model (a name, a folder, or a loaded :class:`ScaleWiseModel`) first and all
else by keyword. The pipelines live here once: an erasure (:func:`erase`, and inside
:func:`demo` and :func:`benchmark`) always goes through the same preset rule and run folder; an
evaluation against the original model is the same call in :func:`evaluate` and :func:`benchmark`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from varerase.config import MAX_BATCH_SIZE, check_device, check_int, check_seed, checked_arguments, short_repr
from varerase.data.concepts import world_concept_prompts
from varerase.data.pairs import PromptPair, load_pairs
from varerase.edits.file_format import load_edit
from varerase.errors import ConfigError, VarEraseWarning
from varerase.methods.config import MethodConfig
from varerase.methods.registry import METHODS, preset_for, registered_method
from varerase.methods.runner import ISSA_FOLDER, ErasureResult, check_run_folder, run_erasure
from varerase.models.attention import resolve_backend
from varerase.models.base import SamplerConfig, ScaleWiseModel
from varerase.models.registry import load_model, model_folder, resolve_mixed_precision
from varerase.runtime.distributed import DistributedContext
from varerase.runtime.output_folders import build_in_place
from varerase.runtime.progress import progress_bar
from varerase.training.parallel import ParallelConfig

METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
PRESET_NAMES: tuple[str, ...] = ("default", *dict.fromkeys(p for m in METHODS.values() for p in m.presets))


def attack_names() -> tuple[str, ...]:
    """The attacks :func:`attack` knows."""
    from varerase.evaluation.attacks.registry import ATTACKS

    return tuple(ATTACKS)


def detector_names() -> tuple[str, ...]:
    """The detectors :func:`evaluate` and :func:`attack` know."""
    from varerase.evaluation.detectors.registry import DETECTORS

    return tuple(DETECTORS)


def is_main_process() -> bool:
    """False on every torchrun rank but 0 (those stay silent; rank 0 reports)."""
    return DistributedContext.current().is_main


@dataclass(frozen=True)
class ModelOptions:
    """How a model given by name is loaded: official weight files, device and precision (None: the defaults).

    ``checkpoint`` / ``vae`` / ``text_encoder``: local paths or hub ids of the official models'
    files; ``mixed_precision``: ``bfloat16`` or ``float16`` autocast for the transformer, ``none``
    for float32, None for the model's default (bfloat16 for infinity-2b/8b on CUDA, else float32);
    ``attention``: teacher forcing's self-attention, ``auto`` (FlexAttention on CUDA, else SDPA),
    ``sdpa`` (dense mask) or ``flex`` (block-sparse), None for the model's own (``auto`` unless saved otherwise).
    """

    checkpoint: str | None = None
    vae: str | None = None
    text_encoder: str | None = None
    device: str = "cpu"
    mixed_precision: str | None = None
    attention: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"model option {f.name} must be a string, got {short_repr(value)}")
        check_device(self.device)  # an unknown device or CUDA on a CPU-only torch fails here, before a model loads
        if self.attention is not None:
            resolve_backend(self.attention, torch.device(self.device))  # so does an unknown backend, or flex where torch lacks it

    @classmethod
    def of(cls, value: "ModelOptions | Mapping[str, Any] | None") -> "ModelOptions":
        """Options from an instance, a mapping of its fields (``autocast_dtype`` accepted for ``mixed_precision``) or None."""
        if value is None or isinstance(value, ModelOptions):
            return value or cls()
        values = {("mixed_precision" if k == "autocast_dtype" else k): v for k, v in dict(value).items()}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown model option(s) {unknown}; known: {', '.join(f.name for f in fields(cls))}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`varerase.models.registry.load_model` (unset ones left out)."""
        values = {"checkpoint": self.checkpoint, "vae": self.vae, "text_encoder": self.text_encoder, "device": self.device, "attention": self.attention}
        return {k: v for k, v in {**values, "autocast_dtype": self.mixed_precision}.items() if v is not None}


@checked_arguments
def resolve_model(
    model: str | ScaleWiseModel = "tiny",
    edit: str | Path | None = None,
    options: ModelOptions | Mapping[str, Any] | None = None,
    force_edit: bool = False,
) -> ScaleWiseModel:
    """A model object from a name/path (loaded with ``options``), with an edit applied if given.

    The edit of an unfinished run, or one made for another base model, is refused unless
    ``force_edit`` (:func:`varerase.edits.file_format.load_edit`).
    """
    if isinstance(model, str):
        model = load_model(model, **ModelOptions.of(options).load_kwargs())
    return load_edit(model, edit, force=force_edit) if edit is not None else model


def sampler_for(model: ScaleWiseModel, **overrides: Any) -> SamplerConfig:
    """The model's default sampler with any non-None ``overrides`` (cfg, temperature, top_k, top_p)."""
    values = asdict(model.default_sampler) | sampling_overrides(overrides)
    return SamplerConfig(**values)


def sampling_overrides(overrides: Mapping[str, Any], takes: Callable | None = None) -> dict[str, Any]:
    """The non-None sampling ``overrides``, checked without a model: an unknown name or a bad value
    (``cfg=nan``, ``temperature=0``) is a ConfigError before any model loads. ``takes``: the function
    the overrides were passed to, whose own arguments a misspelt name may have meant."""
    known = [f.name for f in fields(SamplerConfig)]
    unknown = sorted(str(k) for k in overrides if k not in known)
    if unknown:
        arguments = [p for p, v in inspect.signature(takes).parameters.items() if v.kind is not v.VAR_KEYWORD] if takes else []
        near = difflib.get_close_matches(unknown[0], arguments + known, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        where = f"{takes.__name__}(): " if takes else ""
        raise ConfigError(f"{where}unknown argument or sampling setting(s) {unknown}; {hint}sampling settings: {', '.join(known)}")
    values = {k: v for k, v in overrides.items() if v is not None}
    SamplerConfig(**values)
    return values


def _join_ranks(model_options: ModelOptions | Mapping[str, Any] | None) -> tuple[DistributedContext, ModelOptions]:
    """Join torchrun's process group (alone without torchrun) and point ``device="cuda"`` at this rank's GPU."""
    context = DistributedContext.from_environment()
    options = ModelOptions.of(model_options)
    if context.is_distributed and options.device == "cuda":
        options = ModelOptions(**{**asdict(options), "device": f"cuda:{context.local_rank}"})
    return context, options


@checked_arguments
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


def _evenly_spaced(pairs: Sequence[PromptPair], count: int) -> list[PromptPair]:
    """At most ``count`` of ``pairs``, evenly spaced (ISSA's choice of pairs)."""
    return list(pairs[:: max(1, len(pairs) // count)][:count])


# scales=auto's small ISSA (METHODS.md §4: "a few seeds"): seeds per pair and pairs of the concept.
AUTO_ISSA_SEEDS = 4
AUTO_ISSA_PAIRS = 4


def _sace_issa(method: str, config: MethodConfig, model: str | ScaleWiseModel, concepts: Sequence[str], issa: str | Path | None, out: str | Path | None):
    """Before any model loads: the ISSA at hand for a SACE erase and where it lies (``issa``, else the run folder's
    own :data:`ISSA_FOLDER`, else ``(None, None)``; nothing is read without one), refusing what cannot work."""
    from varerase.evaluation.issa import IssaCurves

    if issa is not None and method != "sace":
        raise ConfigError(f"--issa informs SACE's scales; --method {method} does not read it")
    if method != "sace":
        return None, None
    own = Path(out) / ISSA_FOLDER if out is not None else None
    folder = Path(issa) if issa is not None else own if own is not None and (own / "issa.json").exists() else None
    if folder is None and config.is_auto and (model != "tiny" or len(concepts) != 1):
        raise ConfigError(
            "scales=auto runs a small ISSA with the built-in world's detector, so it needs --model tiny and one --concept; "
            "otherwise run `varerase analyze issa …` and pass --issa DIR, or give scales=0-K"
        )
    return (IssaCurves.read(folder), folder) if folder is not None else (None, None)


def _sace_scales(
    loaded: ScaleWiseModel,
    settings: tuple[str | None, MethodConfig],
    prompt_pairs: Sequence[PromptPair],
    concepts: Sequence[str],
    at_hand: tuple[Any, Path | None],
    *,
    model: str | ScaleWiseModel,
    given: bool,
    out: str | Path | None,
    progress: bool,
    context: DistributedContext,
) -> tuple[tuple[str | None, MethodConfig], dict[str, Any]]:
    """SACE's ``scales`` from ISSA (METHODS.md §4): the settings to run with, and what to record in the run's config.

    ``at_hand``: :func:`_sace_issa`'s curves and folder; they count only when they analysed this
    model and concept (``given`` with ``--issa``: anything else is refused). ``scales=auto`` takes
    §4's rule from them, else runs a small ISSA (:data:`AUTO_ISSA_SEEDS` seeds ×
    :data:`AUTO_ISSA_PAIRS` pairs, the world detector of ``model``, the model as given) and writes it into ``out/issa``.
    ``scales=0`` with ISSA showing that scale 0 prevents less than half of the concept warns
    (:class:`VarEraseWarning`), before any training.
    """
    from varerase.evaluation.detectors.registry import load_detector
    from varerase.evaluation.issa import WARN_PREVENTED, compute_issa, run_issa, scales_setting

    preset, config = settings
    curves, source = at_hand
    if curves is not None:
        fits_concept, fits_model = not concepts or curves.concept in concepts, curves.model_fingerprint == loaded.fingerprint()
        if given and not (fits_concept and fits_model):
            what = f"concept {curves.concept!r}, not {', '.join(concepts)}" if not fits_concept else f"another model (fingerprint {curves.model_fingerprint})"
            raise ConfigError(f"--issa {source} analysed {what}; run `varerase analyze issa` for this model and concept")
        curves = curves if fits_concept and fits_model else None
    if not config.is_auto:
        if curves is not None and config.edit.last_scale == 0 and curves.prevented_at_scale_0 < WARN_PREVENTED:
            warnings.warn(
                f"ISSA ({source}) says scale 0 prevents only {curves.prevented_at_scale_0:.0%} of {curves.concept!r}: SACE with scales=0 "
                f"will erase little; try --set scales=auto (ISSA recommends scales={scales_setting(curves.recommended_last_scale)})",
                VarEraseWarning, stacklevel=3,
            )
        return settings, {}
    started = time.perf_counter()
    if curves is None:
        chosen = _evenly_spaced(prompt_pairs, AUTO_ISSA_PAIRS)
        issa_out = Path(out) / ISSA_FOLDER if out is not None else None
        detector = load_detector("world", list(concepts), model=model)
        analysis = (loaded, chosen, detector, concepts[0], sampler_for(loaded), list(range(AUTO_ISSA_SEEDS)))
        result = run_issa(*analysis, issa_out, progress, context) if issa_out is not None else compute_issa(*analysis, progress, context)
        curves, source = result.curves(), issa_out or f"a {AUTO_ISSA_SEEDS}-seed ISSA of {len(chosen)} pairs"
    last = curves.recommended_last_scale
    config = dataclasses.replace(config, scales=scales_setting(last), edit=dataclasses.replace(config.edit, last_scale=last))
    record = {
        "scales_auto": {
            "chosen": scales_setting(last), "issa": str(source), "verdict": curves.verdict(), "switch_in": curves.switch_in,
            "commit": curves.commit, "seconds": round(time.perf_counter() - started, 3),
        }
    }
    return (preset, config), record


def _model_label(model: str | ScaleWiseModel) -> str:
    return model if isinstance(model, str) else type(model).__name__


def _erase_settings(
    method: str, model: str | ScaleWiseModel, preset: str | None = None, settings: Mapping[str, Any] | None = None, config_file: str | Path | None = None
) -> tuple[str | None, MethodConfig]:
    """The preset a run uses (the registry's preset rule) and its settings tree, built once, before any model loads."""
    preset = preset_for(method, model, preset)
    return preset, registered_method(method).config(preset, dict(settings or {}), str(config_file) if config_file else None)


def _erase_loaded(
    loaded: ScaleWiseModel,
    model: str | ScaleWiseModel,
    method: str,
    prompt_pairs: Sequence[PromptPair],
    retain: Sequence[str],
    *,
    out: str | Path | None,
    settings: tuple[str | None, MethodConfig],
    resume: bool = False,
    reuse_finished: bool = False,
    progress: bool = True,
    context: DistributedContext | None = None,
    parallel: ParallelConfig | None = None,
    activation_checkpointing: bool = False,
    record: Mapping[str, Any] | None = None,
    concepts: Sequence[str] = (),
    issa: str | Path | None = None,
) -> ErasureResult:
    """The one erasure step of every pipeline: the run of ``method`` with ``settings`` from :func:`_erase_settings`
    (``resume``/``reuse_finished``: :func:`varerase.methods.runner.run_erasure`). For SACE, ``scales``
    is settled first from ISSA (:func:`_sace_scales`: ``issa``, the run folder's own, or a small
    ISSA of the world ``concepts`` for ``scales=auto``)."""
    record = dict(record or {})
    if method == "sace":
        at_hand = _sace_issa(method, settings[1], model, concepts, issa, out)
        settings, chosen = _sace_scales(
            loaded, settings, prompt_pairs, concepts, at_hand, model=model, given=issa is not None, out=out, progress=progress,
            context=context or DistributedContext.from_environment(),
        )
        record.update(chosen)
    preset, config = settings
    parallel = parallel or ParallelConfig()
    loaded.set_activation_checkpointing(activation_checkpointing)
    extra = {
        "model": _model_label(model), "preset": preset, "parallel": asdict(parallel),
        "activation_checkpointing": activation_checkpointing, **(record or {}),
    }
    return run_erasure(
        loaded, method, list(prompt_pairs), config, list(retain), run_dir=out, resume=resume, progress=progress,
        extra_config=extra, context=context, parallel=parallel, reuse_finished=reuse_finished,
    )


@checked_arguments
def erase(
    model: str | ScaleWiseModel = "tiny",
    *,
    method: str = "s-vare",
    concepts: Sequence[str] = (),
    pairs: str | Path | Sequence[PromptPair] | None = None,
    out: str | Path | None = None,
    preset: str | None = None,
    resume: bool = False,
    progress: bool = True,
    model_options: ModelOptions | Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    parallel: str = "ddp",
    activation_checkpointing: bool = False,
    issa: str | Path | None = None,
    **settings: Any,
) -> ErasureResult:
    """Erase ``concepts`` (world names) and/or the pairs in ``pairs`` from ``model`` with ``method``.

    ``settings`` override the method's config (``steps``, ``lr``, ``batch_size``, ``lora_rank`` …),
    which ``preset`` (default: ``tiny`` for the built-in model, where the method has one) and then
    ``config_file`` (YAML) set first;
    ``out`` is the run directory (``config.yaml``, ``edit.safetensors``, ``state/``, ``metrics.json``).
    ``parallel`` (under torchrun): ``ddp`` replicates the edit on every rank, ``fsdp`` shards it
    (FSDP2), its deltas gathered in the ``mixed_precision`` of ``model_options`` when one is set.
    ``activation_checkpointing`` recomputes each transformer block in backward instead of keeping
    its activations (less memory, about one more forward per step).
    ``issa``: a folder of ``varerase analyze issa`` results for SACE (``method="sace"``): ``scales=auto``
    takes its recommendation, and ``scales=0`` warns when it shows that scale 0 prevents little
    (:func:`_sace_scales`; without it, ``out/issa`` from an earlier ``auto`` is read when present).
    """
    resolved = _erase_settings(method, model, preset, settings, config_file)  # bad settings fail before a model loads
    if out is not None:
        check_run_folder(out)  # a user's folder is refused before a model loads (and before SACE's ISSA writes into it)
    _sace_issa(method, resolved[1], model, concepts, issa, out)  # what cannot work with SACE's ISSA fails before a model loads
    prompt_pairs, retain = erasure_prompts(concepts, pairs)
    options = ModelOptions.of(model_options)
    parallel_config = ParallelConfig(parallel, param_dtype=resolve_mixed_precision(options.mixed_precision, _model_label(model), options.device))
    context, options = _join_ranks(options)
    loaded = resolve_model(model, options=options)
    record = {"concepts": list(concepts), "pairs_file": str(pairs) if isinstance(pairs, (str, Path)) else None}
    return _erase_loaded(
        loaded, model, method, prompt_pairs, retain, out=out, settings=resolved, resume=resume, progress=progress, context=context,
        parallel=parallel_config, activation_checkpointing=activation_checkpointing, record=record, concepts=concepts, issa=issa,
    )


@checked_arguments
@torch.no_grad()
def generate(
    model: str | ScaleWiseModel = "tiny",
    prompts: Sequence[str] = (),
    *,
    n: int = 1,
    seed: int = 0,
    edit: str | Path | None = None,
    force_edit: bool = False,
    batch_size: int = 64,
    out: str | Path | None = None,
    model_options: ModelOptions | Mapping[str, Any] | None = None,
    negative_prompt: str | None = None,
    progress: bool = True,
    **sampling: Any,
) -> torch.Tensor:
    """``n`` images per prompt, ``[len(prompts)·n, 3, H, W]`` in [0, 1], prompt-major.

    Image ``j`` of prompt ``i`` uses seed ``seed + j``: the same seed gives the same image
    whatever else is in the batch. ``batch_size`` caps the images per generation pass (on CUDA
    the model takes fewer when they would not fit). ``negative_prompt``: guidance pushes away from
    it instead of the empty condition (needs cfg ≠ 1). ``sampling`` overrides
    cfg/temperature/top_k/top_p. With ``out`` the images are also written there as a PNG grid,
    one row per prompt (more than 64 images: a cut grid, and every image in the folder next to it,
    :func:`varerase.imaging.save_generated`); it must be a ``.png`` file in a folder that can be
    written into, checked before any work. ``progress`` shows a bar when there is more than one pass.
    ``force_edit``: see :func:`resolve_model`.
    """
    if not prompts:
        raise ConfigError("give at least one prompt")
    check_int(n, "n", 1)
    check_seed(seed, "seed", count=n)
    check_int(batch_size, "batch_size", 1, MAX_BATCH_SIZE)
    sampling_overrides(sampling, takes=generate)
    if out is not None:
        from varerase.imaging import check_image_path

        check_image_path(out)
    loaded = resolve_model(model, edit, model_options, force_edit)
    texts, seeds = [p for p in prompts for _ in range(n)], [seed + j for _ in prompts for j in range(n)]
    sampler = sampler_for(loaded, **sampling)
    chunks = []
    with progress_bar(progress and len(texts) > batch_size, transient=True) as bar:
        task = bar.add_task("generating", total=len(texts))
        for start in range(0, len(texts), batch_size):
            stop = min(start + batch_size, len(texts))
            chunks.append(loaded.generate_images(texts[start:stop], seeds[start:stop], sampler, batch_size, negative_prompt))
            bar.update(task, completed=stop)
    images = torch.cat(chunks)
    if out is not None:
        from varerase.imaging import save_generated

        save_generated(images, out, per_prompt=n, scale=max(1, 128 // images.shape[-1]))
    return images


@checked_arguments
def evaluation_prompt_groups(concepts: Sequence[str] = (), prompts_file: str | Path | None = None, max_per_group: int | None = None) -> dict:
    """Prompt groups to evaluate on: the world's groups for ``concepts`` and/or a user CSV (I2P, Six-CD, COCO)."""
    from varerase.evaluation.prompts import group_prompts, load_prompt_csv, world_prompt_groups

    if not concepts and prompts_file is None:
        raise ConfigError("say what to evaluate: --concept NAME (built-in world) or --prompts FILE")
    if max_per_group is not None:
        check_int(max_per_group, "max_per_group", 1)
    groups: dict = {}
    if prompts_file is not None:
        groups.update(group_prompts(load_prompt_csv(prompts_file, limit=max_per_group)))
    if concepts and prompts_file is None:
        groups.update(world_prompt_groups(concepts, max_per_group))
    return groups


def _world_evaluation_extras(
    original: ScaleWiseModel,
    concepts: Sequence[str],
    detector: Any,
    sampler: SamplerConfig,
    max_per_group: int | None,
    *,
    progress: bool,
    context: DistributedContext,
) -> tuple[dict, dict]:
    """What a world evaluation adds to its prompt groups: the paraphrase group filtered by the
    ``original`` model (absent when no candidate passes) and ``settings`` records (the filter's
    record, every candidate with its presence). ``max_per_group`` also caps the candidates and the
    group (else all candidates are filtered and the group is capped at the filter's default)."""
    from varerase.evaluation.paraphrases import ParaphraseFilterConfig, paraphrase_group

    limits = {"max_candidates": max_per_group, "max_kept": max_per_group} if max_per_group is not None else {}
    kept, record = paraphrase_group(original, concepts, detector, sampler, ParaphraseFilterConfig(**limits), progress=progress, context=context)
    return ({"paraphrase": kept} if kept else {}), {"paraphrase_filter": record}


@checked_arguments
def evaluate(
    model: str | ScaleWiseModel = "tiny",
    *,
    edit: str | Path | None = None,
    force_edit: bool = False,
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
    paraphrases: bool = True,
    progress: bool = True,
    model_options: ModelOptions | Mapping[str, Any] | None = None,
    **sampling: Any,
) -> dict:
    """Generate, detect and score; with ``edit``, compare the edited model against the original.

    Writes ``metrics.json`` (every figure and setting; keys in :mod:`varerase.evaluation.evaluate`),
    image grids and ``report.html`` into ``out``: built next to it and renamed into place, so
    ``out`` holds a whole evaluation or its old content, never a mix. ``out`` must be new, empty or
    an earlier evaluation (replaced); an erase run's folder or any other folder is refused before
    work. For world ``concepts`` (no ``prompts_file``) the groups are target / anchor / retain /
    heldout, cooccurrence (for an erased shape or colour: two-object prompts, is the other object
    kept?) and, with ``paraphrases``, the paraphrase group the original model draws as the
    concept (:mod:`varerase.evaluation.paraphrases`); with the world detector, retain and anchor
    images are also measured against the world's renders of their captions. ``force_edit``: see
    :func:`resolve_model`.
    """
    from varerase.evaluation.detectors.registry import check_detector, load_detector
    from varerase.evaluation.evaluate import evaluate as run_evaluation
    from varerase.evaluation.ground_truth import world_ground_truth
    from varerase.evaluation.report import build_report

    check_int(samples_per_prompt, "samples_per_prompt", 1, MAX_BATCH_SIZE)
    check_int(batch_size, "batch_size", 1, MAX_BATCH_SIZE)
    check_seed(seed, "seed")
    check_detector(detector, threshold)
    sampling_overrides(sampling, takes=evaluate)
    groups = evaluation_prompt_groups(concepts, prompts_file, max_per_group)
    check_evaluation_folder(out)
    context, options = _join_ranks(model_options)
    loaded = resolve_model(model, options=options)
    scorer = load_detector(detector, list(concepts), clip_model, threshold, model=model)
    measured = list(concepts) or list(scorer.concepts)
    edited = load_edit(loaded, edit, force=force_edit) if edit is not None else None
    sampler = sampler_for(loaded, **sampling)
    world = bool(concepts) and prompts_file is None
    records: dict = {}
    if world and paraphrases:
        extra, records = _world_evaluation_extras(loaded, concepts, scorer, sampler, max_per_group, progress=progress, context=context)
        groups |= extra
    with build_in_place(out, writes=context.is_main) as folder:
        metrics = run_evaluation(
            edited or loaded, groups, scorer, sampler, samples_per_prompt, batch_size, seed, folder,
            measured, reference_model=loaded if edited is not None else None, progress=progress, context=context,
            ground_truth=world_ground_truth(world=_model_world(model)) if world and detector == "world" else None, records=records,
        )
        if context.is_main:
            build_report(folder)
    return metrics


def check_evaluation_folder(out: str | Path) -> None:
    """Refuse an evaluation ``out`` that is an erase run or a user's folder (an earlier evaluation is replaced)."""
    from varerase.runtime.output_folders import check_writable, folder_kind, refuse_user_folder

    out = Path(out)
    kind = folder_kind(out)
    if kind == "erase-run":
        raise ConfigError(f"{out} is an erase run; evaluate into a folder of its own, e.g. --out {out / 'eval'}")
    if kind == "other":
        refuse_user_folder(out, "evaluation (metrics.json)")
    check_writable(out.absolute().parent)


@checked_arguments
def report(run: str | Path) -> Path:
    """Rebuild ``report.html`` in evaluation folder ``run`` from its ``metrics.json``; returns the report's path."""
    from varerase.evaluation.report import build_report

    return build_report(run)


@checked_arguments
def attack(
    model: str | ScaleWiseModel = "tiny",
    *,
    edit: str | Path | None = None,
    force_edit: bool = False,
    name: str = "paraphrase",
    concept: str = "circle",
    out: str | Path = "runs/attack",
    detector: str = "world",
    clip_model: str | None = None,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    model_options: ModelOptions | Mapping[str, Any] | None = None,
):
    """Run attack ``name`` against the (edited) model; writes ``attack.json`` and images into ``out``.

    Under ``torchrun`` the ranks share the work (each loads the model onto its own GPU); rank 0 writes.
    ``force_edit``: see :func:`resolve_model`.
    """
    from varerase.evaluation.attacks.registry import run_attack
    from varerase.evaluation.detectors.registry import check_detector, load_detector

    check_detector(detector)
    context, options = _join_ranks(model_options)
    loaded = resolve_model(model, edit, options, force_edit)
    scorer = load_detector(detector, [concept], clip_model, model=model)
    return run_attack(name, loaded, concept, scorer, sampler_for(loaded), out, config, progress, context)


@checked_arguments
def issa(
    model: str | ScaleWiseModel = "tiny",
    *,
    edit: str | Path | None = None,
    force_edit: bool = False,
    concept: str = "circle",
    out: str | Path = "runs/issa",
    seeds: int = 8,
    max_pairs: int = 6,
    detector: str | None = "world",
    clip_model: str | None = None,
    progress: bool = True,
    model_options: ModelOptions | Mapping[str, Any] | None = None,
):
    """ISSA (METHODS.md §5) for a world concept's pairs: switch-in and commit curves, per-scale saliency, KL and
    SACE's verdict (:meth:`IssaCurves.verdict`); written into ``out``. ``clip_model``: for ``detector="clip"``.

    Under ``torchrun`` the ranks share the pairs out (each loads the model onto its own GPU); rank 0 writes.
    ``force_edit``: see :func:`resolve_model`.
    """
    from varerase.evaluation.detectors.registry import check_detector, load_detector
    from varerase.evaluation.issa import run_issa

    check_int(seeds, "seeds", 1, MAX_BATCH_SIZE)
    check_int(max_pairs, "max_pairs (--pairs)", 1)
    if detector is not None:
        check_detector(detector)
    chosen = _evenly_spaced(world_concept_prompts([concept]).pairs, max_pairs)
    context, options = _join_ranks(model_options)
    loaded = resolve_model(model, edit, options, force_edit)
    scorer = load_detector(detector, [concept], clip_model, model=model) if detector else None
    return run_issa(loaded, chosen, scorer, concept if scorer else None, sampler_for(loaded), list(range(seeds)), out, progress, context)


@checked_arguments
def demo(*, concept: str = "circle", method: str = "s-vare", out: str | Path = "runs/demo", steps: int | None = None, progress: bool = True):
    """The main job: erase ``concept`` from the built-in model with ``method`` and measure before/after.

    Writes the run (``out/run``), ``out/before_after.png`` and ``out/demo.json``; returns a
    :class:`varerase.tiny.demo.DemoResult`. An existing ``out/run`` is resumed, or reused when finished.
    """
    from varerase.evaluation.detectors.registry import load_world_detector
    from varerase.io import atomic_write_json
    from varerase.tiny.demo import DemoResult, demo_prompts, measure_world_erasure, save_before_after

    started = time.perf_counter()
    out = Path(out)
    pairs, retain, targets, others = demo_prompts(concept)
    resolved = _erase_settings(method, "tiny", None, {"steps": steps})  # bad settings fail before any work
    loaded = load_model("tiny")
    detector = load_world_detector()
    before = measure_world_erasure(loaded, concept, targets, others, detector)
    result = _erase_loaded(
        loaded, "tiny", method, pairs, retain, out=out / "run", settings=resolved, resume=True, reuse_finished=True,
        progress=progress, record={"concepts": [concept]}, concepts=[concept],
    )
    after = measure_world_erasure(result.model, concept, targets, others, detector)
    grid = save_before_after(before, after, out / "before_after.png")
    outcome = DemoResult(concept, method, before.presence, after.presence, before.following, after.following, time.perf_counter() - started, grid)
    atomic_write_json(vars(outcome), out / "demo.json")
    return outcome


@checked_arguments
def benchmark(
    model: str | ScaleWiseModel = "tiny",
    *,
    concepts: Sequence[str] = ("circle", "red", "striped"),
    methods: Sequence[str] = ("all",),
    out: str | Path,
    samples_per_prompt: int = 9,
    max_per_group: int | None = None,
    preset: str | None = None,
    progress: bool = True,
    model_options: ModelOptions | Mapping[str, Any] | None = None,
) -> list[dict]:
    """Every method on every world concept: erase (``out/CONCEPT/METHOD``), then evaluate against the original.

    ``methods``: names, or variants with settings of their own (``vare[loss=ce]``,
    :func:`varerase.methods.registry.method_variant`); ``all`` is every method plus
    :data:`varerase.methods.registry.BENCHMARK_VARIANTS`.

    The defaults are sized for claims outside their intervals: every prompt of every group
    (``max_per_group=None``) × 9 samples gives ≥ 324 images per rate (48 target / anchor /
    held-out prompts for a shape or colour, 72 for a background, 36 for a style; 36
    co-occurrence prompts for a shape or colour) and ≥ 1,944 retain images (216–252 prompts,
    ≤ 36 paraphrase prompts); small values make a smoke run. The paraphrase group is
    filtered once per concept by the original model, and every image is judged by ``model``'s world
    detector (a ``train-tiny`` folder's own, else the shipped one). ``preset`` applies to every method that has it (default: the preset rule
    of :func:`erase`). The original model's images are drawn once per concept and reused for
    every method. Writes ``results.json`` (the rows), ``results.md`` (table, legend and wall
    time), ``benchmark.json`` (settings, the paraphrase filters and the wall time) and
    ``tradeoff.png`` into ``out``; returns the rows
    (:func:`varerase.evaluation.benchmark_table.benchmark_row`). Under torchrun the erasures use
    DDP and the evaluations share their generation.
    """
    from varerase.evaluation.benchmark_table import benchmark_row, markdown_table, plot_tradeoff
    from varerase.evaluation.detectors.registry import load_world_detector, world_detector_path
    from varerase.evaluation.evaluate import ReferenceImages
    from varerase.evaluation.evaluate import evaluate as run_evaluation
    from varerase.evaluation.ground_truth import world_ground_truth
    from varerase.evaluation.prompts import world_prompt_groups
    from varerase.io import atomic_write_json, atomic_write_text

    started = time.perf_counter()
    out = Path(out)
    check_int(samples_per_prompt, "samples_per_prompt (--samples)", 1, MAX_BATCH_SIZE)
    if max_per_group is not None:
        check_int(max_per_group, "max_per_group", 1)
    if not concepts:
        raise ConfigError("give at least one concept to benchmark, e.g. --concepts circle,red")
    from varerase.methods.registry import BENCHMARK_VARIANTS, method_variant

    methods = [*METHOD_NAMES, *BENCHMARK_VARIANTS] if list(methods) in (["all"], []) else list(methods)
    variants = [method_variant(spec) for spec in methods]
    # Unknown names, presets and settings fail before any work.
    resolved = {v.label: _erase_settings(v.method, model, preset, v.settings) for v in variants}
    for v in variants:  # SACE's scales=auto needs the built-in world (one concept per erasure here)
        _sace_issa(v.method, resolved[v.label][1], model, concepts[:1], None, None)
    world_concept_prompts(concepts)
    context, options = _join_ranks(model_options)
    progress = progress and context.is_main
    loaded = resolve_model(model, options=options)
    detector = load_world_detector(world_detector_path(model))
    truth = world_ground_truth(world=_model_world(model))
    rows, filters = [], {}
    for concept in concepts:
        prompts = world_concept_prompts([concept])
        groups = world_prompt_groups([concept], max_per_group)
        extra, records = _world_evaluation_extras(
            loaded, [concept], detector, loaded.default_sampler, max_per_group, progress=progress, context=context
        )
        groups |= extra
        filters[concept] = {k: records["paraphrase_filter"][k] for k in ("num_candidates", "num_kept", "num_used")}
        original_images = ReferenceImages(loaded.fingerprint(), loaded.default_sampler)  # the original's images, drawn once per concept
        for variant in variants:
            run_dir = out / concept / variant.folder
            result = _erase_loaded(
                loaded, model, variant.method, prompts.pairs, prompts.retain, out=run_dir, settings=resolved[variant.label], resume=True,
                reuse_finished=True, progress=progress, context=context, record={"concepts": [concept]}, concepts=[concept],
            )
            evaluation_started = time.perf_counter()
            with build_in_place(run_dir / "eval", writes=context.is_main) as folder:
                metrics = run_evaluation(
                    result.model, groups, detector, loaded.default_sampler, samples_per_prompt, 48, 0, folder, [concept],
                    reference_model=loaded, progress=progress, context=context, ground_truth=truth, records=records,
                    reference_images=original_images,
                )
            row = benchmark_row(concept, variant.label, metrics, result.metrics)
            rows.append(row | {"evaluation_seconds": time.perf_counter() - evaluation_started})
            if context.is_main:
                atomic_write_json(rows, out / "results.json")
    wall = time.perf_counter() - started
    if context.is_main:
        threads = torch.get_num_threads()
        summary = {
            "wall_seconds": wall, "torch_threads": threads, "world_size": context.world_size, "concepts": list(concepts), "methods": methods,
            "samples_per_prompt": samples_per_prompt, "max_per_group": max_per_group, "paraphrase_filters": filters,
        }
        atomic_write_json(summary, out / "benchmark.json")
        timing = f"Wall time: {wall:.0f} s ({threads} torch threads, {context.world_size} process(es)); {samples_per_prompt} samples per prompt.\n"
        atomic_write_text(markdown_table(rows) + "\n" + timing, out / "results.md")
        plot_tradeoff(rows, out / "tradeoff.png")
    return rows


@checked_arguments
def quality(model: str | ScaleWiseModel = "tiny", *, detector_path: str | Path | None = None):
    """The built-in model's quality table (held-out prompts, detector accuracy, speed) for ``model``
    (``tiny`` or a folder written by ``train-tiny``, whose ``detector.safetensors`` is used unless
    ``detector_path`` is given); returns a :class:`varerase.tiny.quality.QualityReport`. The
    detector's rows use fresh images of the world the folder's ``training.json`` records."""
    from varerase.evaluation.detectors.registry import load_world_detector, world_detector_path
    from varerase.tiny.quality import measure_quality

    detector = load_world_detector(detector_path or world_detector_path(model))
    return measure_quality(resolve_model(model), detector, world=_model_world(model))


def _model_world(model: str | ScaleWiseModel):
    """The world ``model`` was trained on: its folder's ``training.json`` record, else the default world."""
    from varerase.tiny.train import trained_world

    folder = model_folder(model)
    return trained_world(folder) if folder is not None else None


@checked_arguments
def train_tiny(
    *, out: str | Path, seed: int = 0, transformer_steps: int | None = None, quick: bool = False,
    settings: Mapping[str, Any] | None = None, device: str = "cpu", progress: bool = True, resume: bool = False,
):
    """Retrain the built-in model (world, tokenizer, detector, transformer) into ``out`` on ``device``;
    returns ``(training metrics, quality report)``. ``quick``: a minute-long smoke run with tiny
    budgets (poor quality). ``settings``: :class:`varerase.tiny.train.TinyTrainingConfig` fields laid
    over those (dotted keys for the nested configs: ``transformer.width``); they win over
    ``seed`` and ``transformer_steps`` (None: ``TinyTrainingConfig``'s, the shipped model's). ``resume``: continue an interrupted run in ``out`` (same
    settings and device kind) from its last saved state, to the same weights. The quality table
    is measured on the CPU."""
    from varerase.tiny.train import tiny_training_config
    from varerase.tiny.train import train_tiny as run_training

    check_seed(seed, "seed", count=3)  # the phases use seed, seed + 1, seed + 2
    if transformer_steps is not None:
        check_int(transformer_steps, "transformer_steps", 1)
    device = check_device(device)
    quick_budgets = {"train_images": 2000, "tokenizer_steps": 50, "detector_steps": 50, "transformer_steps": 50}
    budgets = quick_budgets if quick else {} if transformer_steps is None else {"transformer_steps": transformer_steps}
    config = tiny_training_config(settings, seed=seed, **budgets)
    check_seed(config.seed, "seed", count=3)
    metrics = run_training(out, config, progress=progress, device=device, resume=resume)
    return metrics, quality(str(out))
