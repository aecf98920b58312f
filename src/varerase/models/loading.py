"""Strict state-dict loading shared by every model family: mismatches are errors that list them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from varerase.errors import CheckpointError


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` into ``module`` requiring the exact key set and shapes; errors list every mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint {source} does not match the model:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:20]) + (f", … ({len(items) - 20} more)" if len(items) > 20 else "")
                parts.append(f"  {len(items)} {title}: {shown}")
        raise CheckpointError("\n".join(parts))
    module.load_state_dict(state, strict=True)
