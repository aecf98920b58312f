"""Strict state-dict loading shared by every model family: mismatches are errors that list them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from varerase.errors import CheckpointError


def check_strict(module: nn.Module, shapes: dict[str, torch.Size], source: str | Path) -> None:
    """Require ``shapes`` (key → shape of what a checkpoint holds) to match ``module``'s state dict exactly;
    the error lists every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    shared = sorted(set(own) & set(shapes))
    mismatched = [f"{k}: checkpoint {tuple(shapes[k])} vs model {tuple(own[k].shape)}" for k in shared if tuple(shapes[k]) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint {source} does not match the model:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:20]) + (f", … ({len(items) - 20} more)" if len(items) > 20 else "")
                parts.append(f"  {len(items)} {title}: {shown}")
        raise CheckpointError("\n".join(parts))


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` into ``module`` requiring the exact key set and shapes; errors list every mismatch."""
    check_strict(module, {k: v.shape for k, v in state.items()}, source)
    module.load_state_dict(state, strict=True)


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; an unreadable file is a CheckpointError naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(path)
    except Exception as error:  # the safetensors parser's own errors: report the file, not the parser
        raise CheckpointError(f"could not read {path} as safetensors: {error}") from error


def read_json_config(path: str | Path) -> dict:
    """A JSON object from ``path``; a missing or malformed file is a CheckpointError naming it."""
    import json

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path.parent} holds no {path.name}; expected a folder written by save_pretrained")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"could not read {path}: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data
