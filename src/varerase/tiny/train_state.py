"""``train-tiny``'s resumable state: ``OUT/state/step-NNNNNNNN/``, written as one unit (:mod:`varerase.training.checkpoint`).

A state is saved after the tokenizer, after the detector and every ``checkpoint_every``
transformer steps. It holds what the finished phases made and where the transformer phase is:

- ``progress.json``: the run's config and device kind (a resume must match both), the finished
  phases' metrics and seconds, and the transformer's losses so far (one per step taken);
- ``vae.safetensors`` once the tokenizer is trained, ``detector.safetensors`` once the detector is;
- ``transformer.safetensors`` and ``optimizer.pt`` (AdamW's state, the batch generator's and the
  global RNG's, a weights-only pickle) once the transformer has taken steps.

A state's number counts the finished units (1 after the tokenizer, 2 after the detector, 2 + k
after k transformer steps), so every save is a new folder and a process killed at any moment
leaves the previous state whole. Nothing in a state names a path.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from varerase.errors import CheckpointError
from varerase.evaluation.detectors.world_detector import WorldDetector
from varerase.io import atomic_save_safetensors, atomic_write_bytes, atomic_write_json
from varerase.models.infinity.vae import BitwiseVAE
from varerase.training.checkpoint import latest_checkpoint, write_checkpoint

STATE_FOLDER = "state"


@dataclass
class TransformerProgress:
    """Where the transformer phase is: its weights, AdamW's state, the batch generator's and the
    global RNG's states (uint8 tensors) and the loss of every step taken (``len(losses)`` steps)."""

    weights: dict[str, torch.Tensor]
    optimizer: dict
    generator: torch.Tensor
    torch_rng: torch.Tensor
    losses: list[float]


@dataclass
class SavedTraining:
    """A state read back: ``progress`` as in the module docstring; the phases' results where they finished."""

    progress: dict
    vae: BitwiseVAE | None
    detector: WorldDetector | None
    transformer: TransformerProgress | None


def save_training_state(
    out_dir: Path, progress: dict, vae: BitwiseVAE, detector: WorldDetector | None = None, transformer: TransformerProgress | None = None
) -> Path:
    """Write a state into ``out_dir/state/`` (see the module docstring); returns its folder.
    ``progress``: ``config``, ``device``, ``metrics``, ``seconds`` (the transformer's losses come from ``transformer``)."""
    writers = {
        "progress.json": lambda path: atomic_write_json({**progress, "losses": transformer.losses if transformer else []}, path),
        "vae.safetensors": lambda path: atomic_save_safetensors(vae.state_dict(), path),
    }
    if detector is not None:
        writers["detector.safetensors"] = detector.save
    if transformer is not None:
        buffer = io.BytesIO()
        torch.save({"optimizer": transformer.optimizer, "generator": transformer.generator, "torch_rng": transformer.torch_rng}, buffer)
        writers["transformer.safetensors"] = lambda path: atomic_save_safetensors(transformer.weights, path)
        writers["optimizer.pt"] = lambda path: atomic_write_bytes(buffer.getvalue(), path)
    units = 1 + (detector is not None) + (len(transformer.losses) if transformer else 0)
    return write_checkpoint(out_dir / STATE_FOLDER, units, writers)


def load_training_state(out_dir: Path, vae: BitwiseVAE, device: torch.device | str = "cpu") -> SavedTraining | None:
    """The newest state in ``out_dir/state/``, its VAE loaded into ``vae`` (moved to ``device``,
    in eval mode) and its detector on the CPU; None when there is none. A damaged state is a CheckpointError naming its file."""
    folder = latest_checkpoint(out_dir / STATE_FOLDER)
    if folder is None:
        return None
    try:
        progress = json.loads((folder / "progress.json").read_text(encoding="utf-8"))
        vae.load_state_dict(load_file(folder / "vae.safetensors"))
        detector = WorldDetector.load(folder / "detector.safetensors") if (folder / "detector.safetensors").exists() else None
        transformer = None
        if (folder / "transformer.safetensors").exists():
            saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
            transformer = TransformerProgress(
                load_file(folder / "transformer.safetensors"), saved["optimizer"], saved["generator"], saved["torch_rng"], list(progress["losses"])
            )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"the train-tiny state {folder} cannot be read ({str(error).splitlines()[0]}); delete {folder.parent} to start over") from None
    return SavedTraining(progress, vae.to(device).eval(), detector, transformer)
