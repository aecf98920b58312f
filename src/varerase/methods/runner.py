"""One erasure run: eraser + trainer + a run directory (``config.yaml``, ``edit.safetensors``, ``state/``, ``metrics.json``).

A run directory is marked finished only by ``run.json`` with ``"status": "complete"``, written
last; every file is written atomically, so an interrupted run is never mistaken for a finished one.
``run.json`` also keeps the run's history (started, resumed with which changes, complete). Only
a folder with our ``run.json`` is a run: any other non-empty folder is refused, never written
into. A process holds ``.varerase.lock`` in the folder while it runs, so a second one is refused.

Under ``torchrun`` every rank runs this function: the ranks share the batch (DDP), rank 0 alone
writes the run directory, and it returns on every rank once the directory is complete.
"""

from __future__ import annotations

import datetime
import functools
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal, Mapping, Sequence

import yaml

from varerase.data.pairs import PromptPair
from varerase.edits.edited_model import EditedModel
from varerase.edits.file_format import BASE_FINGERPRINT, load_edit, save_edit
from varerase.errors import CheckpointError, ConfigError
from varerase.io import atomic_write_json, atomic_write_yaml
from varerase.methods.config import MethodConfig
from varerase.methods.registry import registered_method
from varerase.models.base import ScaleWiseModel
from varerase.models.loading import read_json_config
from varerase.runtime.distributed import DistributedContext
from varerase.runtime.output_folders import LOCK_NAME, RUN_FORMAT, FolderLock, folder_kind, read_run_marker, refuse_user_folder
from varerase.training.parallel import ParallelConfig, gather_edit, shard_edit
from varerase.training.trainer import Trainer, seed_everything


@dataclass
class ErasureResult:
    """What a finished run produced: the edited model, its folder and its metrics."""

    model: EditedModel
    run_dir: Path | None
    metrics: dict


# What an erase may write into its run directory before the run starts: the ISSA that chose SACE's
# scales=auto (varerase.api.erase), so that a resumed run reads it back instead of repeating it.
ISSA_FOLDER = "issa"


RESUME_SAFE_SETTINGS = frozenset({"method_config.training.checkpoint_every", "method_config.training.log_every"})
# How a run ran, not what it computes (SACE's scales=auto records its ISSA; the chosen scales are in method_config).
RECORDED_ONLY = frozenset({"model", "preset", "parallel", "activation_checkpointing", "concepts", "pairs_file", "scales_auto"})
STEPS_KEY = "method_config.training.steps"


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """Dotted keys of a nested mapping; values normalised as YAML reads them back (tuples → lists)."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = json.loads(json.dumps(value, default=str))
    return flat


def settings_changes(saved: Mapping, wanted: Mapping) -> tuple[dict[str, list], list[str]]:
    """``(changes, refused)``: every setting that differs (``key: [saved, wanted]``) and those a resume may not change.

    A resume may change how a run runs (:data:`RECORDED_ONLY`, :data:`RESUME_SAFE_SETTINGS`) and
    raise ``steps`` (it extends the run); anything else — concept, pairs, method, a method or
    trainer setting, the model's fingerprint, fewer steps — would make the edit other than what
    ``config.yaml`` describes.
    """
    old, new = _flatten(saved), _flatten(wanted)
    changes = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}

    def allowed(key: str) -> bool:
        if key.split(".")[0] in RECORDED_ONLY or key in RESUME_SAFE_SETTINGS:
            return True
        before, after = changes[key]
        return key == STEPS_KEY and isinstance(before, int) and isinstance(after, int) and after > before

    return changes, [k for k in changes if not allowed(k)]


@dataclass(frozen=True)
class RunPlan:
    """What :func:`run_erasure` does with a run folder: ``new``, ``resume`` it, or ``reuse`` its finished edit."""

    action: Literal["new", "resume", "reuse"]
    changes: dict[str, list]
    history: list[dict]


def check_run_folder(run_dir: str | Path) -> str:
    """The :func:`folder_kind` of a run folder to be, refusing (ConfigError) any non-empty folder that is not an erase run.

    Our lock and an :data:`ISSA_FOLDER` (written by SACE's ``scales=auto`` before the run starts) do not make a folder non-empty.
    """
    kind = folder_kind(run_dir, ignored=(LOCK_NAME, ISSA_FOLDER))
    if kind not in ("absent", "empty", "erase-run"):
        refuse_user_folder(Path(run_dir), "erase run (run.json)")
    return kind


def plan_run(run_dir: Path, resolved: Mapping, resume: bool, reuse_finished: bool) -> RunPlan:
    """Read ``run_dir`` (writing nothing) and decide; every refusal is a ConfigError naming the folder (and the keys)."""
    if check_run_folder(run_dir) in ("absent", "empty"):
        return RunPlan("new", {}, [])
    marker = read_run_marker(run_dir)
    finished = marker.get("status") == "complete"
    if not (resume or (finished and reuse_finished)):
        what = "a finished run; choose another --out or delete it" if finished else "an unfinished run; pass --resume to continue it or choose another --out"
        raise ConfigError(f"{run_dir} already holds {what}")
    saved = _read_saved_config(run_dir / "config.yaml")
    changes, refused = settings_changes(saved, resolved)
    if refused:
        shown = "; ".join(_shown_change(k, *changes[k]) for k in refused[:6])
        raise ConfigError(
            f"{run_dir} holds a run with other settings ({shown}{' …' if len(refused) > 6 else ''}); a resume keeps them "
            "(only more steps, checkpoint_every, log_every and how it runs may change): choose another --out"
        )
    history = list(marker.get("history", [])) if isinstance(marker.get("history"), list) else []
    if finished:
        if STEPS_KEY not in changes:
            if reuse_finished:
                return RunPlan("reuse", changes, history)
            steps = saved.get("method_config", {}).get("training", {}) or {}
            extend = f"to extend its {steps['steps']} steps pass more --steps with --resume, or " if "steps" in steps else ""
            raise ConfigError(f"{run_dir} already holds a finished run; {extend}choose another --out")
    return RunPlan("resume", changes, history)


def _shown_change(key: str, before: object, after: object) -> str:
    """``key: before → after``, or the key alone when the values are too long for one line (prompt lists)."""
    text = f"{before!r} → {after!r}"
    return f"{key}: {text}" if len(text) <= 60 else f"{key} differs"


def _read_saved_config(path: Path) -> dict:
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise CheckpointError(f"could not read {path} ({str(error).splitlines()[0]}); choose another --out") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no run settings; choose another --out")
    return saved


def _event(name: str, **fields_: object) -> dict:
    return {"event": name, "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **fields_}


def check_batches_split(config: MethodConfig, context: DistributedContext) -> None:
    """Refuse batch sizes (``batch_size``, ``benign_batch_size`` …) the ranks cannot share evenly."""
    for f in fields(config):
        size = getattr(config, f.name)
        if f.name.endswith("batch_size") and size % context.world_size:
            raise ConfigError(f"{f.name} {size} does not split over {context.world_size} processes; choose a multiple of {context.world_size}")


def run_erasure(
    model: ScaleWiseModel,
    method: str,
    pairs: Sequence[PromptPair],
    config: MethodConfig,
    retain_prompts: Sequence[str] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    extra_config: dict | None = None,
    context: DistributedContext | None = None,
    parallel: ParallelConfig | None = None,
    reuse_finished: bool = False,
) -> ErasureResult:
    """Erase with ``method`` under ``config`` (its settings tree) and write the run directory (if given); see module docstring.

    ``config`` is a config of ``method``'s config class (:func:`~varerase.methods.registry.method_config`);
    one without a ``training`` section (UCE) computes its edit in ``prepare()``. ``resume=True``
    continues an interrupted run from its last saved state and ends with the same edit as an
    uninterrupted run; it is refused when the settings differ from the folder's ``config.yaml``
    (:func:`settings_changes`), and a finished run is resumed only to extend it (more ``steps``).
    ``reuse_finished``: a finished run with the same settings is not run again; its edit is
    loaded (the demo and the benchmark re-run this way). ``cache_dir`` defaults to
    ``run_dir/teacher_cache``. ``context`` defaults to the processes torchrun started (this one
    alone without torchrun); ``parallel`` says how they share the edit (default DDP; ``fsdp``
    shards it, see docs/distributed.md).
    """
    context = context or DistributedContext.from_environment()
    parallel = parallel or ParallelConfig()
    context.check_device(model)
    progress = progress and context.is_main
    registered = registered_method(method)
    if not isinstance(config, registered.config_class):  # bad settings stop here, before any file
        wanted = registered.config_class.__name__
        raise ConfigError(f"method {method!r} takes a {wanted}, got a {type(config).__name__}; build it with method_config({method!r}, …)")
    trains = config.training is not None
    if trains:
        check_batches_split(config, context)
    fingerprint = model.fingerprint()
    resolved = {
        "method": method,
        "method_config": config.to_dict(),
        "model_fingerprint": fingerprint,
        "pairs": [asdict(p) for p in pairs],
        "retain_prompts": list(retain_prompts),
        **(extra_config or {}),
    }
    if run_dir is None:
        return _erase(model, method, pairs, config, retain_prompts, None, None, resolved, False, cache_dir, progress, context, parallel)
    run_dir = Path(run_dir)
    plan = plan_run(run_dir, resolved, resume, reuse_finished)  # read only, on every rank
    if plan.action == "reuse":
        return ErasureResult(load_edit(model, run_dir), run_dir, read_json_config(run_dir / "metrics.json", "choose another --out"))
    lock = FolderLock(run_dir)
    created = not run_dir.exists()  # removed again if the run stops before writing anything (a setting refused by the eraser)
    failure = None
    if context.is_main:
        try:
            lock.acquire()
            plan = plan_run(run_dir, resolved, resume, reuse_finished)  # again under the lock: another process may have written meanwhile
        except ConfigError as error:
            failure = error
    refusals = context.all_gather_objects(str(failure) if failure else None)
    if refusals[0] is not None:  # every rank stops, not only rank 0
        raise failure or ConfigError(refusals[0])
    try:
        return _erase(
            model, method, pairs, config, retain_prompts, run_dir, plan, resolved, plan.action == "resume",
            cache_dir or run_dir / "teacher_cache", progress, context, parallel,
        )
    finally:
        if context.is_main:
            lock.release()
            if created and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()


def _erase(
    model: ScaleWiseModel,
    method: str,
    pairs: Sequence[PromptPair],
    config: MethodConfig,
    retain_prompts: Sequence[str],
    run_dir: Path | None,
    plan: RunPlan | None,
    resolved: dict,
    resume: bool,
    cache_dir: str | Path | None,
    progress: bool,
    context: DistributedContext,
    parallel: ParallelConfig,
) -> ErasureResult:
    """The erasure itself, once :func:`run_erasure` has checked and locked the run folder (``run_dir`` None: no folder)."""
    trains = config.training is not None
    writes = run_dir is not None and context.is_main
    seed_everything(config.seed)
    registered = registered_method(method)
    eraser = registered.eraser(model, pairs, config, retain_prompts, cache_dir=cache_dir, progress=progress, context=context)
    history = plan.history if plan is not None else []
    if writes:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(resolved, run_dir / "config.yaml")  # a resume's allowed changes (more steps) are recorded in run.json's history
        history = [*history, _event("resumed", changes=plan.changes) if resume else _event("started")]
        atomic_write_json({"format": RUN_FORMAT, "status": "running", "method": method, "history": history}, run_dir / "run.json")

    started = time.perf_counter()
    eraser.prepare()
    prepare_seconds = time.perf_counter() - started
    steps_run, resumed_from = [], 0
    if trains:  # closed-form methods (UCE) finish their edit in prepare()
        sharded = context.is_distributed and parallel.strategy == "fsdp"
        if sharded:  # before the optimiser exists: FSDP2 replaces the parameters by their shards
            shard_edit(eraser.edit, list(eraser.edit.parts.values()), parallel)
        round_weights = functools.partial(eraser.edit.round_merged_weights, model)  # used with update_precision bfloat16
        trainer = Trainer(eraser.edit, config.training, run_dir, progress=progress, context=context, round_weights=round_weights)
        resumed_from = trainer.step if resume and trainer.load_state() else 0
        # DDP wraps the edit after it is loaded, for training only: later uses of the edited model
        # (evaluation on one rank, say) must not wait for the other ranks' gradients.
        with eraser.edited.edit_called_through(eraser.edit if sharded else context.data_parallel(eraser.edit)):
            steps_run = trainer.run(eraser.step, description=f"{method}")
        del trainer  # frees the optimiser state before the sharded edit is gathered
        if sharded:  # every rank gets the whole edit back, a plain module again
            eraser.replace_edit(gather_edit(model, eraser.edit))
    seconds = time.perf_counter() - started
    metrics = {
        "method": method,
        "steps": config.training.steps if trains else 0,
        "resumed_from_step": resumed_from,
        "wall_seconds": round(seconds, 3),
        "prepare_seconds": round(prepare_seconds, 3),
        "forward_tokens": sum(context.all_gather_objects(eraser.forward_tokens)),
        "world_size": context.world_size,
        "parallel": parallel.strategy if context.is_distributed else None,
        "final": steps_run[-1] if steps_run else {},
    }
    if writes:
        save_edit(eraser.edit, run_dir / "edit.safetensors", model, extra_metadata={"method": method, BASE_FINGERPRINT: resolved["model_fingerprint"]})
        atomic_write_json(metrics, run_dir / "metrics.json")
        history = [*history, _event("complete", steps=metrics["steps"])]
        atomic_write_json({"format": RUN_FORMAT, "status": "complete", "method": method, "history": history}, run_dir / "run.json")
    context.barrier()  # no rank returns before the run directory is complete
    return ErasureResult(eraser.edited_model(), run_dir, metrics)
