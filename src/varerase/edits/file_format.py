"""The edit file, ``edit.safetensors``: writing an edit and reading it back onto a model.

A full edit stores the merged changed weights ``W + Δ`` in float32 under the model's parameter
names; a LoRA edit stores its factors under peft's key names (``….lora_A.weight``,
``….lora_B.weight``) with ``rank`` and ``alpha`` in the metadata, so peft can load it. The
metadata also records ``format: varerase-edit``, the module groups, the scope and the start
context, which is all :func:`load_edit` needs besides the model, and the fingerprint of the base
model it was made for (``base_model_fingerprint``), which :func:`load_edit` checks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from varerase.edits.delta import EditConfig, ParameterEdit
from varerase.edits.edited_model import EditedModel
from varerase.errors import CheckpointError
from varerase.io import atomic_save_safetensors
from varerase.models.base import ScaleWiseModel
from varerase.runtime.output_folders import read_run_marker

BASE_FINGERPRINT = "base_model_fingerprint"
FORCE_HINT = "pass --force-edit (force_edit=True) to apply it anyway"


def save_edit(edit: ParameterEdit, path: str | Path, model: nn.Module, extra_metadata: dict[str, str] | None = None) -> None:
    """Write ``edit.safetensors``: merged changed weights (full) or LoRA factors with peft's key names."""
    config = edit.config
    metadata = {
        "format": "varerase-edit", "scope": config.scope, "last_scale": str(config.last_scale), "start_context": config.start_context,
        "groups": ",".join(config.groups),
    }
    if edit.config.lora_rank == 0:
        tensors = edit.changed_weights(model)
        metadata["kind"] = "weights"
    else:
        tensors = {}
        for name in edit.names:
            module_name = name[: -len(".weight")]
            lora_a, lora_b = edit.lora_factors(name)
            tensors[f"{module_name}.lora_A.weight"] = lora_a.detach()
            tensors[f"{module_name}.lora_B.weight"] = lora_b.detach()
        metadata.update(kind="lora", rank=str(edit.config.lora_rank), alpha=str(edit.config.lora_alpha or edit.config.lora_rank))
    metadata.update(extra_metadata or {})
    atomic_save_safetensors(tensors, path, metadata=metadata)


def _check_finished(path: Path, force: bool) -> None:
    """Refuse the edit of a run folder whose run.json does not say it finished."""
    marker = read_run_marker(path.parent)
    if marker is not None and marker.get("status") != "complete" and not force:
        raise CheckpointError(
            f"{path.parent} is an unfinished run (run.json says {marker.get('status')!r}): its edit is not the finished one; "
            f"finish it with the same erase command and --resume, or {FORCE_HINT}"
        )


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: {name} holds {tensor.dtype} values; an edit holds floating-point weights")
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: {name} holds NaN or infinite values; the edit is damaged (or its training diverged)")


def _metadata_number(path: Path, metadata: dict[str, str], key: str, kind: type) -> int | float:
    try:
        value = kind(metadata[key])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: metadata {key}={metadata.get(key)!r} is not a {kind.__name__} ({type(error).__name__})") from None
    if not value > 0:
        raise CheckpointError(f"{path}: metadata {key}={metadata[key]!r} must be positive")
    return value


def _last_scale(path: Path, metadata: dict[str, str]) -> int:
    """A gated edit's last confined scale (metadata ``last_scale``, 0 when absent: edits from before scales 0..k)."""
    text = metadata.get("last_scale", "0")
    if not text.isdigit():
        raise CheckpointError(f"{path}: metadata last_scale={text!r} is not a scale index (0, 1, …)")
    return int(text)


def load_edit(model: ScaleWiseModel, path: str | Path, force: bool = False) -> EditedModel:
    """Read an ``edit.safetensors`` written by :func:`save_edit` and apply it to ``model``.

    ``path``: a run folder or its edit file. Refused (CheckpointError) unless ``force``: the edit of
    an unfinished run (its ``run.json`` is not ``complete``) and an edit made for another base
    model (``base_model_fingerprint`` ≠ ``model.fingerprint()``; edits of earlier versions, which
    recorded none, are not checked). Always refused: non-float or non-finite tensors and
    malformed metadata.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "edit.safetensors"
    if not path.exists():
        raise CheckpointError(f"no edit at {path}; pass a run directory or its edit.safetensors")
    _check_finished(path, force)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:
        raise CheckpointError(f"could not read {path} as safetensors: {error}") from error
    if metadata.get("format") != "varerase-edit":
        raise CheckpointError(f"{path} is not a varerase edit (no 'format: varerase-edit' metadata)")
    _check_tensors(path, tensors)
    made_for = metadata.get(BASE_FINGERPRINT)
    if made_for is not None and not force and made_for != (this_model := model.fingerprint()):
        raise CheckpointError(f"{path} was made for another model (fingerprint {made_for}, this model's is {this_model}); {FORCE_HINT}")
    params = dict(model.named_parameters())
    kind = metadata.get("kind")
    scope = metadata.get("scope", "all")
    config = EditConfig(
        groups=metadata.get("groups", "").split(",") if metadata.get("groups") else (),
        lora_rank=int(_metadata_number(path, metadata, "rank", int)) if kind == "lora" else 0,
        lora_alpha=float(_metadata_number(path, metadata, "alpha", float)) if kind == "lora" else None,
        scope="gated" if scope == "scale0" else scope,  # "scale0": SACE's edits from before the gate took scales 0..k
        last_scale=_last_scale(path, metadata),
        start_context=metadata.get("start_context", "original"),
    )
    edit = ParameterEdit(model, config)
    if kind == "weights":
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise CheckpointError(f"{path} edits parameters this model does not have: {unknown[:10]}")
        expected = set(edit.names)
        if set(tensors) != expected:
            raise CheckpointError(f"{path} edits {len(tensors)} parameters but groups {config.groups} hold {len(expected)}")
        deltas = edit.deltas
        for name, weight in tensors.items():
            if weight.shape != params[name].shape:
                raise CheckpointError(f"{path}: {name} has shape {tuple(weight.shape)}, model has {tuple(params[name].shape)}")
            deltas[name].data = (weight.float() - params[name].detach().float()).to(params[name].device)
    elif kind == "lora":
        for name in edit.names:
            module_name = name[: -len(".weight")]
            for factor, param in zip(("lora_A", "lora_B"), edit.lora_factors(name)):
                tensor_name = f"{module_name}.{factor}.weight"
                if tensor_name not in tensors:
                    raise CheckpointError(f"{path} lacks {tensor_name}")
                if tensors[tensor_name].shape != param.shape:
                    raise CheckpointError(f"{path}: {tensor_name} has shape {tuple(tensors[tensor_name].shape)}, expected {tuple(param.shape)}")
                param.data = tensors[tensor_name].to(param.device, torch.float32)
    else:
        raise CheckpointError(f"{path} has unknown edit kind {kind!r}")
    return EditedModel(model, edit.requires_grad_(False))
