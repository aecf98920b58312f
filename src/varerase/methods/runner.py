"""One erasure run: eraser + trainer + a run directory (``config.yaml``, ``edit.safetensors``, ``state/``, ``metrics.json``).

A run directory is marked finished only by ``run.json`` with ``"status": "complete"``, written
last; every file is written atomically, so an interrupted run is never mistaken for a finished one.

Under ``torchrun`` every rank runs this function: the ranks share the batch (DDP), rank 0 alone
writes the run directory, and it returns on every rank once the directory is complete.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

from varerase.data.pairs import PromptPair
from varerase.edits.edited_model import EditedModel
from varerase.edits.file_format import save_edit
from varerase.errors import ConfigError
from varerase.io import atomic_write_json, atomic_write_yaml
from varerase.methods.config import MethodConfig
from varerase.methods.registry import registered_method
from varerase.models.base import ScaleWiseModel
from varerase.models.loading import read_json_config
from varerase.runtime.distributed import DistributedContext
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


def run_status(run_dir: Path) -> str:
    """``"complete"``, ``"incomplete"`` (started, not finished) or ``"absent"`` (nothing there but an :data:`ISSA_FOLDER`)."""
    marker = run_dir / "run.json"
    if marker.exists() and read_json_config(marker, "delete it to resume the run, or choose another --out").get("status") == "complete":
        return "complete"
    return "incomplete" if run_dir.exists() and any(p.name != ISSA_FOLDER for p in run_dir.iterdir()) else "absent"


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
) -> ErasureResult:
    """Erase with ``method`` under ``config`` (its settings tree) and write the run directory (if given); see module docstring.

    ``config`` is a config of ``method``'s config class (:func:`~varerase.methods.registry.method_config`);
    one without a ``training`` section (UCE) computes its edit in ``prepare()``. ``resume=True``
    continues an interrupted run from its last saved state and ends with the same edit as an
    uninterrupted run. ``cache_dir`` defaults to ``run_dir/teacher_cache``.
    ``context`` defaults to the processes torchrun started (this one alone without torchrun);
    ``parallel`` says how they share the edit (default DDP; ``fsdp`` shards it, see
    docs/distributed.md).
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
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        status = run_status(run_dir)
        if status == "complete" and not resume:
            raise ConfigError(f"{run_dir} already holds a finished run; choose another --out or delete it")
        if status == "incomplete" and not resume:
            raise ConfigError(f"{run_dir} holds an unfinished run; pass --resume to continue it or choose another --out")
        if cache_dir is None:
            cache_dir = run_dir / "teacher_cache"
    context.barrier()  # every rank has read the run directory's status before rank 0 writes to it
    seed_everything(config.seed)
    eraser = registered.eraser(model, pairs, config, retain_prompts, cache_dir=cache_dir, progress=progress, context=context)
    resolved = {
        "method": method,
        "method_config": config.to_dict(),
        "model_fingerprint": model.fingerprint(),
        "pairs": [asdict(p) for p in pairs],
        "retain_prompts": list(retain_prompts),
        **(extra_config or {}),
    }
    if run_dir is not None and context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (resume and (run_dir / "config.yaml").exists()):  # a resumed run keeps its original config
            atomic_write_yaml(resolved, run_dir / "config.yaml")
        atomic_write_json({"status": "running"}, run_dir / "run.json")

    started = time.perf_counter()
    eraser.prepare()
    prepare_seconds = time.perf_counter() - started
    history, resumed_from = [], 0
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
            history = trainer.run(eraser.step, description=f"{method}")
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
        "final": history[-1] if history else {},
    }
    if run_dir is not None and context.is_main:
        save_edit(eraser.edit, run_dir / "edit.safetensors", model, extra_metadata={"method": method})
        atomic_write_json(metrics, run_dir / "metrics.json")
        atomic_write_json({"status": "complete", "method": method}, run_dir / "run.json")
    context.barrier()  # no rank returns before the run directory is complete
    return ErasureResult(eraser.edited_model(), run_dir, metrics)
