"""A resumable state as one unit: ``state/step-NNNNNNNN/`` with its files and a manifest of their hashes.

A state is written into ``state/.step-NNNNNNNN.partial/``, its ``manifest.json`` (each file's
SHA-256) last, then renamed into place in one step; older states are removed only after that.
A process killed at any moment therefore leaves the previous state whole — never weights of one
step beside the optimiser of another — and :func:`latest_checkpoint` verifies the manifest
before a state is used. The flat ``state/`` of earlier versions (``progress.json`` beside the
other files, no manifest) is still read.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Callable, Mapping

from varerase.errors import CheckpointError
from varerase.io import atomic_write_json

STEP_FOLDER = re.compile(r"step-(\d{8,})")
MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def write_checkpoint(state_dir: Path, step: int, writers: Mapping[str, Callable[[Path], object]]) -> Path:
    """Write ``state_dir/step-NNNNNNNN/`` as one unit: each ``writers[name](path)`` writes file ``name``; returns the folder."""
    name = f"step-{step:08d}"
    partial = state_dir / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for file_name, write in writers.items():
        write(partial / file_name)
    atomic_write_json({"step": step, "files": {f: file_sha256(partial / f) for f in writers}}, partial / MANIFEST)
    final = state_dir / name
    shutil.rmtree(final, ignore_errors=True)  # a state of the same step (a run re-saving its last state)
    partial.rename(final)
    for folder in state_dir.iterdir():  # only now: until the rename the previous state is the valid one
        match = STEP_FOLDER.fullmatch(folder.name)
        if folder != final and (match or folder.name.endswith(".partial")):
            shutil.rmtree(folder, ignore_errors=True)
    for legacy in ("module.safetensors", "optimizer.pt", "progress.json"):
        (state_dir / legacy).unlink(missing_ok=True)
    return final


def verify_checkpoint(folder: Path) -> None:
    """Raise CheckpointError unless every file ``folder``'s manifest names is there with its hash."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = dict(manifest["files"])
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"{folder / MANIFEST} is missing or damaged ({error}); delete {folder.parent} to restart the run") from None
    for name, expected in files.items():
        path = folder / name
        if not path.is_file() or file_sha256(path) != expected:
            raise CheckpointError(f"{path} does not match its manifest (changed or cut after it was saved); delete {folder.parent} to restart the run")


def latest_checkpoint(state_dir: Path) -> Path | None:
    """The newest verified state folder in ``state_dir`` (a legacy flat ``state/`` is itself one); None when there is none."""
    if not state_dir.is_dir():
        return None
    steps = sorted((int(m.group(1)), p) for p in state_dir.iterdir() if (m := STEP_FOLDER.fullmatch(p.name)) and p.is_dir())
    if steps:
        folder = steps[-1][1]
        verify_checkpoint(folder)
        return folder
    return state_dir if (state_dir / "progress.json").exists() else None
