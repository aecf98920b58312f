"""The folders varerase writes into: what a folder holds, who writes into it now, and building one in place.

Two kinds of folder are ours:

* an **erase run** — a folder whose ``run.json`` we wrote (``"format": "varerase-run"``; the
  files of older versions, ``{"status": …}`` beside a ``config.yaml``, count too);
* an **evaluation** — a folder whose ``metrics.json`` has a ``settings`` section and a
  ``model`` or ``before``/``after`` section (what :func:`varerase.evaluation.evaluate.evaluate`
  writes).

Any other non-empty folder belongs to the user and is never written into (:func:`folder_kind`
says which it is). :class:`FolderLock` keeps two processes out of one folder, and
:func:`build_in_place` builds a folder next to its target and renames it into place, so a
reader sees the old folder or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal, Sequence

from varerase.errors import ConfigError

RUN_FORMAT = "varerase-run"
LOCK_NAME = ".varerase.lock"
FolderKind = Literal["absent", "empty", "erase-run", "evaluation", "other"]


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def read_run_marker(folder: Path) -> dict | None:
    """``folder/run.json`` when it is ours (see the module docstring), else None."""
    marker = _read_json(folder / "run.json")
    if not isinstance(marker, dict):
        return None
    if marker.get("format") == RUN_FORMAT:
        return marker
    legacy = set(marker) <= {"status", "method"} and marker.get("status") in ("running", "complete")
    return marker if legacy and (folder / "config.yaml").is_file() else None


def is_evaluation(folder: Path) -> bool:
    """Whether ``folder/metrics.json`` is an evaluation's (a ``settings`` and a model section)."""
    metrics = _read_json(folder / "metrics.json")
    return isinstance(metrics, dict) and "settings" in metrics and bool({"model", "before", "after"} & set(metrics))


def folder_kind(folder: str | Path, ignored: Sequence[str] = (LOCK_NAME,)) -> FolderKind:
    """What ``folder`` holds: nothing (``absent``/``empty``, entries named in ``ignored`` aside), one of our folders, or the user's."""
    folder = Path(folder)
    if not folder.exists():
        return "absent"
    if not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder; choose a folder for --out")
    try:
        entries = [p.name for p in folder.iterdir() if p.name not in ignored]
    except OSError as error:
        raise ConfigError(f"cannot read folder {folder}: {error.strerror or error}") from None
    if not entries:
        return "empty"
    if (folder / "run.json").is_file() and not isinstance(_read_json(folder / "run.json"), dict):
        raise ConfigError(f"could not read {folder / 'run.json'} (not a JSON object); delete the folder or choose another --out")
    if read_run_marker(folder) is not None:
        return "erase-run"
    return "evaluation" if is_evaluation(folder) else "other"


def refuse_user_folder(folder: Path, what: str) -> None:
    """Raise for a non-empty folder that is not ours, naming it: varerase never writes into it."""
    raise ConfigError(
        f"{folder} is not empty and holds no {what} of varerase; choose a new or empty folder for --out "
        "(varerase writes only into folders it made)"
    )


def check_writable(folder: str | Path) -> Path:
    """``folder`` (created with its parents if missing), or a ConfigError when it cannot be written into."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create folder {folder}: {error.strerror or error}") from None
    try:  # a real write: permission bits say nothing for root, a read-only mount or /proc
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ConfigError(f"cannot write into {folder} ({error.strerror or error})") from None
    return folder


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class FolderLock:
    """``folder/.varerase.lock`` held while a process writes into ``folder``.

    The file names the holder (host and pid). A second process is refused with that name; a lock
    left by a process of this host that no longer exists is stale and taken over. A lock from
    another host cannot be checked, so the error says to delete it if no process runs there.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.owner, f)
        return True

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the process holding it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._try_create():
            return
        holder = _read_json(self.path)
        holder = holder if isinstance(holder, dict) else {}
        here = holder.get("host") == self.owner["host"]
        if here and isinstance(holder.get("pid"), int) and not _process_alive(holder["pid"]):
            self.path.unlink(missing_ok=True)  # stale: its process died without releasing it
            if self._try_create():
                return
        who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
        raise ConfigError(
            f"{self.path.parent} is in use by {who} (lock {self.path}); wait for it to finish"
            + ("" if here else ", or delete the lock if no varerase runs there")
        )

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if _read_json(self.path) == self.owner:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def build_in_place(target: str | Path, writes: bool = True) -> Iterator[Path]:
    """Yield an empty folder next to ``target`` to build in; on success it replaces ``target`` (two renames).

    A build killed half-way leaves ``target`` as it was; the next build clears the leftover
    ``.NAME.partial-PID`` folders of processes that no longer run. ``target`` must be absent, empty
    or one of our evaluation folders (the caller checks). ``writes=False`` (torchrun ranks but 0,
    which write nothing) yields ``target`` itself and touches no file.
    """
    target = Path(target).absolute()
    if not writes:
        yield target
        return
    prefix = f".{target.name}.partial-"
    for leftover in target.parent.glob(prefix + "*"):
        pid = leftover.name[len(prefix):]
        if not (pid.isdigit() and _process_alive(int(pid))):
            shutil.rmtree(leftover, ignore_errors=True)
    partial = target.parent / f"{prefix}{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)
