"""Strict state-dict loading shared by every model family: mismatches are errors that list them."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, TypeVar

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


def safetensors_shapes(path: str | Path) -> dict[str, torch.Size]:
    """Key → shape of every tensor of a safetensors file, from its header alone (no tensor is read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: torch.Size(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as error:  # the safetensors parser's own errors: report the file, not the parser
        raise CheckpointError(f"could not read {path} as safetensors: {error}") from error


M = TypeVar("M", bound=nn.Module)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside keep their parameters on the meta device (nothing allocated, no initialisation
    that counts); buffers, persistent or not (RoPE tables, masks), are computed as usual."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def load_pretrained_module(build: Callable[[], M], path: str | Path, device: str | torch.device = "cpu") -> M:
    """``build()`` with the weights of safetensors file ``path``, on ``device``, checked before anything is allocated.

    The module is first built on the meta device and its keys and shapes compared with the file's
    header (:func:`check_strict`): a config that does not fit its weights fails there, even one that
    would take terabytes. Then it is built again with its parameters on the meta device (its
    buffers computed on ``device``) and the file's tensors are assigned to it, in the dtypes the
    module declares.
    """
    path = Path(path)
    with torch.device("meta"):
        skeleton = build()
    check_strict(skeleton, safetensors_shapes(path), path)
    dtypes = {k: v.dtype for k, v in skeleton.state_dict().items()}
    del skeleton
    with torch.device(device), _parameters_on_meta():
        module = build()
    state = {k: v.to(device=device, dtype=dtypes[k]) for k, v in read_safetensors(path).items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module


def read_json_config(path: str | Path, remedy: str | None = None) -> dict:
    """A JSON object from ``path``; a missing or malformed file is a CheckpointError naming it (and ``remedy``: what to do)."""
    import json

    path = Path(path)
    then = f"; {remedy}" if remedy else ""
    if not path.exists():
        raise CheckpointError(f"{path.parent} holds no {path.name}; expected a folder written by save_pretrained")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"could not read {path}: {error}{then}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object{then}")
    return data
