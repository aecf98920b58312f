"""The training loop every method shares: AdamW, clipping, progress, logs, resumable state.

A method supplies a *step function* ``step(index, update) -> dict[str, float]`` that computes its
losses and calls ``update(loss)`` once per optimiser step it wants (S-VARE's reference update
calls it twice). The trainer owns the optimiser, the RNG used for batches, the JSONL log and the
``state/`` folder that ``--resume`` reads.

Under ``torchrun`` every rank runs the same loop on its slice of each batch; rank 0 alone writes
the log and ``state/``, and every rank reads the same ``state/`` on resume.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from varerase.errors import CheckpointError, ConfigError, VarEraseError
from varerase.io import atomic_save_safetensors, atomic_write_bytes, atomic_write_json, atomic_write_text
from varerase.runtime.distributed import DistributedContext
from varerase.runtime.progress import progress_bar
from varerase.training.checkpoint import latest_checkpoint, write_checkpoint

UpdateFn = Callable[[torch.Tensor], float]
StepFn = Callable[[int, UpdateFn], dict[str, float]]
RoundFn = Callable[[torch.dtype], None]
UPDATE_PRECISIONS = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}  # accepted name → canonical


class NonFiniteLossError(VarEraseError):
    """A loss became NaN or infinite; the last good state is kept."""


@dataclass
class TrainerConfig:
    """Optimiser and loop settings (S-VARE reference values where the paper's code fixes them).

    ``update_precision``: ``"float32"`` keeps the trained weights in float32 (a float32 master
    copy: updates below bfloat16 resolution accumulate). ``"bfloat16"`` (alias ``"bf16"``) is
    the reference code's pure-bf16 training, which casts the blocks to bfloat16 before building
    AdamW: after every optimiser step the trained weights are rounded to bfloat16 (the edit's
    ``W + Δ``, see :meth:`~varerase.edits.delta.ParameterEdit.round_merged_weights`), so an update
    smaller than half a bf16 step is lost. AdamW's moments stay float32 either way.
    """

    steps: int = 200
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.97)
    weight_decay: float = 0.005  # on 2-D weights only
    grad_clip: float = 5.0
    checkpoint_every: int = 50  # steps between resumable states (and at the end)
    log_every: int = 1
    update_precision: Literal["float32", "bfloat16", "fp32", "bf16"] = "float32"  # the aliases become their canonical name

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.update_precision not in UPDATE_PRECISIONS:
            raise ConfigError(f"update_precision must be float32 or bfloat16 (bf16), got {self.update_precision!r}")
        self.update_precision = UPDATE_PRECISIONS[self.update_precision]
        if self.steps < 1:
            raise ConfigError(f"steps must be ≥ 1, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise ConfigError(f"grad_clip must be a positive number, got {self.grad_clip}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1) (reference: [0.9, 0.97]), got {list(self.betas)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be ≥ 0, got {self.weight_decay}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be ≥ 1, got {self.checkpoint_every}")


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on ``(seed, step)``: batches and dropout masks replay exactly on resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**64)  # any seed in [0, 2**64) works


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(parameters: list[tuple[str, nn.Parameter]], config: TrainerConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D tensors only (the reference code's grouping)."""
    decay = [p for _, p in parameters if p.ndim >= 2]
    no_decay = [p for _, p in parameters if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas)


class Trainer:
    """Runs a step function for ``config.steps`` steps over ``module``'s trainable parameters.

    ``run_dir`` (optional) receives ``log.jsonl`` and ``state/``; with ``resume=True`` the loop
    continues from the last saved state (optimiser, step, RNG, parameters) bit for bit.
    ``context``: the ranks training together (default: this process alone); logged values are
    their means, so the log reads as a single-process run's. ``round_weights(dtype)`` makes the
    weights ``module`` trains representable in ``dtype``; it runs after every optimiser step when
    ``config.update_precision`` is not float32 (and must then be given). The saved state holds
    the rounded parameters, so a resumed run continues from exactly what the next step would see.
    """

    def __init__(
        self,
        module: nn.Module,
        config: TrainerConfig,
        run_dir: str | Path | None = None,
        progress: bool = True,
        context: DistributedContext | None = None,
        round_weights: RoundFn | None = None,
    ) -> None:
        if config.update_precision != "float32" and round_weights is None:
            raise ConfigError(f"update_precision={config.update_precision!r} needs round_weights: the trainer cannot round {type(module).__name__}'s own")
        self.module = module
        self.config = config
        self.round_weights = round_weights
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.context = context or DistributedContext()
        self.progress = progress and self.context.is_main
        self.parameters = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not self.parameters:
            raise ConfigError("nothing to train: the edit has no trainable parameters")
        self.optimizer = make_optimizer(self.parameters, config)
        self.step = 0
        self.history: list[dict[str, float]] = []

    # --- state ---------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path | None:
        return self.run_dir / "state" if self.run_dir is not None else None

    def save_state(self) -> None:
        """Write a resumable state as one unit (rank 0): ``state/step-NNNNNNNN/`` (see :mod:`varerase.training.checkpoint`).

        It holds the parameters (safetensors), optimiser and RNG (weights-only pickle), the step
        and log history, and a manifest of the files' hashes. The states are *full* ones
        (PyTorch's ``get_state_dict(full_state_dict=True)``), gathered from the ranks when the edit
        is sharded, so a run can resume on another number of ranks or with another parallel
        strategy. Every rank must call this (the gather is collective).
        """
        if self.state_dir is None:
            return
        import io

        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        module_state, optimizer_state = get_state_dict(self.module, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.context.is_main:
            return
        buffer = io.BytesIO()
        torch.save({"optimizer": optimizer_state, "torch_rng": torch.get_rng_state()}, buffer)
        write_checkpoint(
            self.state_dir, self.step,
            {
                "module.safetensors": lambda path: atomic_save_safetensors({k: v.contiguous() for k, v in module_state.items()}, path),
                "optimizer.pt": lambda path: atomic_write_bytes(buffer.getvalue(), path),
                "progress.json": lambda path: atomic_write_json({"step": self.step, "history": self.history}, path),
            },
        )

    def _read_state(self, folder: Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
        """A checkpoint folder's progress, optimiser/RNG and module files; a damaged one is a CheckpointError naming it."""

        def damaged(name: str, why: object) -> CheckpointError:
            return CheckpointError(
                f"{folder / name} is damaged ({str(why).splitlines()[0] if str(why) else type(why).__name__}); "
                f"delete {self.state_dir} to restart the run from step 0, or choose another --out"
            )

        try:
            progress = json.loads((folder / "progress.json").read_text(encoding="utf-8"))
            step, history = int(progress["step"]), list(progress["history"])
            if step < 0 or not all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in history):
                raise ValueError("a negative step or malformed history")
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
            raise damaged("progress.json", error) from None
        try:
            saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
            if not isinstance(saved, dict) or not {"optimizer", "torch_rng"} <= set(saved):
                raise ValueError("no 'optimizer' and 'torch_rng' entries")
        except Exception as error:  # torch.load's unpickler raises many kinds; the file is what matters
            raise damaged("optimizer.pt", error) from None
        try:
            module_state = load_file(folder / "module.safetensors")
        except Exception as error:  # the safetensors parser's own errors
            raise damaged("module.safetensors", error) from None
        return {"step": step, "history": history}, saved, module_state

    def load_state(self) -> bool:
        """Restore the newest saved state (every rank reads the same files and keeps its shard); False when there is none."""
        folder = latest_checkpoint(self.state_dir) if self.state_dir is not None else None
        if folder is None:
            return False
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        progress, saved, module_state = self._read_state(folder)
        try:
            set_state_dict(
                self.module, self.optimizer, model_state_dict=module_state,
                optim_state_dict=saved["optimizer"], options=StateDictOptions(full_state_dict=True, strict=True),
            )
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as error:
            raise ConfigError(
                f"the resumable state in {self.state_dir} does not fit this run's edit (another method setting "
                f"or varerase version?): {str(error).splitlines()[0]}; start a new --out"
            ) from error
        try:
            torch.set_rng_state(saved["torch_rng"])
        except (RuntimeError, TypeError) as error:
            raise CheckpointError(f"{folder / 'optimizer.pt'} holds no valid RNG state ({error}); delete {self.state_dir} to restart") from None
        self.step = int(progress["step"])
        self.history = list(progress["history"])
        return True

    # --- loop ----------------------------------------------------------------------------------
    def _update(self, loss: torch.Tensor) -> float:
        # Every rank sees every rank's loss: one rank stopping alone would leave the others waiting in backward.
        losses = self.context.all_gather_objects(loss.item())
        if not all(math.isfinite(value) for value in losses):
            shown = losses[0] if len(losses) == 1 else f"{losses} (per rank)"
            raise NonFiniteLossError(
                f"loss became {shown} at step {self.step + 1}; stopped, the last good state "
                f"(step {self.step}) is kept — lower --lr or check the prompts"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in self.parameters], self.config.grad_clip)
        self.optimizer.step()
        if self.config.update_precision != "float32":
            self.round_weights(getattr(torch, self.config.update_precision))
        # Sharded gradients give a DTensor norm (already reduced over ranks); its value is the whole one.
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def run(self, step_fn: StepFn, description: str = "erasing") -> list[dict[str, float]]:
        """Run the remaining steps; returns the per-step log records."""
        log_path = self.run_dir / "log.jsonl" if self.run_dir is not None and self.context.is_main else None
        if log_path is not None:  # steps logged after the state this run starts from (none: step 0) will run again
            atomic_write_text("".join(json.dumps(r) + "\n" for r in self.history if r["step"] % self.config.log_every == 0), log_path)
        with progress_bar(self.progress, with_info=True) as bar:
            task = bar.add_task(description, total=self.config.steps, completed=self.step, info="")
            while self.step < self.config.steps:
                record = self.context.mean({k: float(v) for k, v in step_fn(self.step, self._update).items()})
                self.step += 1
                record = {"step": self.step, **record}
                self.history.append(record)
                if log_path is not None and self.step % self.config.log_every == 0:
                    with log_path.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(record) + "\n")
                shown = "  ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "step")
                bar.update(task, completed=self.step, info=shown)
                if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                    self.save_state()
                    if self.progress and self.state_dir is not None:
                        bar.console.print(f"saved resumable state at step {self.step}")
        return self.history
