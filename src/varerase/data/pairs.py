"""Prompt pairs ``(c_u, c_a)``: read and written as JSON, JSONL or CSV (METHODS.md §0).

Accepted key sets, per entry (a JSON object or a CSV header):

* S-VARE: ``original_prompt`` (target ``c_u``) and ``modified_prompt`` (anchor ``c_a``);
* EAR: ``unsafe_prompt`` (target) and ``safe_prompt`` (anchor);

plus an optional ``concept`` (multi-concept files). Other keys are ignored. Prompts are stripped
of surrounding whitespace; an empty prompt or a non-string value is an error. Files are UTF-8
(a BOM is allowed) with ``\\n`` or ``\\r\\n`` line endings. Every problem is a
:class:`~varerase.errors.DataError` naming the file, the 1-based line and what was wrong.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from varerase.errors import DataError
from varerase.io import atomic_write_text

KEY_SETS: dict[str, tuple[str, str]] = {
    "svare": ("original_prompt", "modified_prompt"),
    "ear": ("unsafe_prompt", "safe_prompt"),
}
EXTENSIONS = (".json", ".jsonl", ".csv")
_EXPECTED = "'original_prompt' + 'modified_prompt' (S-VARE) or 'unsafe_prompt' + 'safe_prompt' (EAR)"


@dataclass(frozen=True)
class PromptPair:
    """One erasure pair: ``target`` is the unsafe prompt ``c_u``, ``anchor`` its safe counterpart ``c_a``."""

    target: str
    anchor: str
    concept: str | None = None

    @classmethod
    def of(cls, value: Any) -> "PromptPair":
        """A pair from a :class:`PromptPair`, a ``(target, anchor)`` or ``(target, anchor, concept)`` tuple, or a
        mapping with a pair file's keys (:data:`KEY_SETS`); anything else is a DataError saying what a pair is."""
        if isinstance(value, PromptPair):
            return value
        if isinstance(value, dict):
            return _pair(value, "prompt pair")
        if isinstance(value, (tuple, list)) and len(value) in (2, 3) and all(isinstance(v, str) or v is None for v in value):
            where = f"prompt pair {_short(value)}"
            target, anchor = (_text(v, k, where, required=True) for v, k in zip(value, ("target", "anchor")))
            concept = _text(value[2], "concept", where, required=False) if len(value) == 3 else None
            return cls(target, anchor, concept)  # type: ignore[arg-type]
        raise DataError(f"a prompt pair is a PromptPair, a (target, anchor) tuple of strings or a mapping with keys {_EXPECTED}; got {_short(value)}")


def _where(path: Path, line: int | None, entry: int | None = None) -> str:
    parts = [str(path)]
    if entry is not None:
        parts.append(f"entry {entry}")
    if line is not None:
        parts.append(f"line {line}")
    return ", ".join(parts)


def _text(value: Any, key: str, where: str, required: bool) -> str | None:
    """A stripped string value, or None for an absent optional one."""
    if value is None:
        if required:
            raise DataError(f"{where}: no value for {key!r}")
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__} {_short(value)}")
    value = value.strip()
    if not value and required:
        raise DataError(f"{where}: {key!r} is empty")
    return value or None


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pair(entry: Any, where: str) -> PromptPair:
    """Turn one parsed entry (a mapping) into a :class:`PromptPair`."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with keys {_EXPECTED}, got {type(entry).__name__} {_short(entry)}")
    for target_key, anchor_key in KEY_SETS.values():
        if target_key in entry and anchor_key in entry:
            target = _text(entry[target_key], target_key, where, required=True)
            anchor = _text(entry[anchor_key], anchor_key, where, required=True)
            concept = _text(entry.get("concept"), "concept", where, required=False)
            return PromptPair(target, anchor, concept)  # type: ignore[arg-type]
    found = ", ".join(repr(k) for k in list(entry)[:10]) or "none"
    raise DataError(f"{where}: missing key(s); expected {_EXPECTED}; found keys: {found}")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"prompt-pair file {path} does not exist") from None
    except OSError as error:
        raise DataError(f"cannot read prompt-pair file {path}: {error}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{_where(path, line)}: not valid UTF-8 (byte {error.start}): {error.reason}") from None


def _json_entry_lines(text: str) -> list[int] | None:
    """Best effort: the 1-based line where each entry of a top-level JSON list starts (one pass over ``text``)."""
    decoder, ws = json.JSONDecoder(), " \t\n\r"
    try:
        i = len(text) - len(text.lstrip(ws))
        if text[i] != "[":
            return None
        i += 1
        lines: list[int] = []
        line, counted = 1, 0  # newlines in text[:counted] are counted in line
        while True:
            while text[i] in ws:
                i += 1
            if text[i] == "]":
                return lines
            line, counted = line + text.count("\n", counted, i), i
            lines.append(line)
            _, i = decoder.raw_decode(text, i)
            while text[i] in ws:
                i += 1
            if text[i] == ",":
                i += 1
    except (ValueError, IndexError, RecursionError):
        return None


def _parse_json(text: str, path: Path, first_line: int = 1) -> Any:
    """``json.loads(text)``; errors become :class:`DataError` at the failing line (``text`` starts on ``first_line``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        line = first_line + error.lineno - 1
        raise DataError(f"{_where(path, line)}: not valid JSON: {error.msg} (column {error.colno})") from None
    except (ValueError, RecursionError) as error:  # over-long integers, deep nesting
        raise DataError(f"{_where(path, first_line)}: not valid JSON: {error}") from None


def _load_json(path: Path, text: str) -> list[PromptPair]:
    data = _parse_json(text, path)
    if not isinstance(data, list):
        first = text.count("\n", 0, len(text) - len(text.lstrip())) + 1
        raise DataError(f"{_where(path, first)}: expected a JSON list of objects, got {type(data).__name__}")
    lines = _json_entry_lines(text) if data else []
    return [_pair(entry, _where(path, lines[i] if lines and i < len(lines) else None, i)) for i, entry in enumerate(data)]


def _load_jsonl(path: Path, text: str) -> list[PromptPair]:
    lines = enumerate(text.split("\n"), start=1)
    return [_pair(_parse_json(line, path, number), _where(path, number)) for number, line in lines if line.strip()]


def _load_csv(path: Path, text: str) -> list[PromptPair]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    pairs = []
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                if not any(t in header and a in header for t, a in KEY_SETS.values()):
                    raise DataError(
                        f"{_where(path, line)}: the CSV header has columns {header[:10]}; expected {_EXPECTED}"
                    )
                continue
            cells: list[str | None] = [*row, *[None] * (len(header) - len(row))]
            pairs.append(_pair(dict(zip(header, cells)), _where(path, line)))
    except csv.Error as error:
        raise DataError(f"{_where(path, start)}: not valid CSV: {error}") from None
    return pairs


_LOADERS = {".json": _load_json, ".jsonl": _load_jsonl, ".csv": _load_csv}


def load_pairs(path: str | Path) -> list[PromptPair]:
    """Read prompt pairs from a ``.json`` list of objects, a ``.jsonl`` file or a ``.csv`` with a header.

    Raises :class:`DataError` (file, line, what was wrong) for anything malformed or an empty file.
    """
    path = Path(path)
    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DataError(f"{path}: unknown prompt-pair file extension {path.suffix!r}; use one of {', '.join(EXTENSIONS)}")
    text = _read_text(path)
    pairs = loader(path, text) if text.strip() else []
    if not pairs:
        raise DataError(f"no pairs in {path}")
    return pairs


def save_pairs(pairs: list[PromptPair], path: str | Path, keys: Literal["svare", "ear"] = "svare") -> Path:
    """Write ``pairs`` so that :func:`load_pairs` reads them back; returns the path written.

    The format follows the extension (``.json``, ``.jsonl``, ``.csv``); a path without one gets
    ``.jsonl``. ``keys`` picks the key set (S-VARE by default); ``concept`` is written when any
    pair has one.
    """
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".jsonl")
    if path.suffix.lower() not in _LOADERS:
        raise DataError(f"{path}: unknown prompt-pair file extension {path.suffix!r}; use one of {', '.join(EXTENSIONS)}")
    if keys not in KEY_SETS:
        raise DataError(f"unknown key set {keys!r}; known: {', '.join(KEY_SETS)}")
    target_key, anchor_key = KEY_SETS[keys]
    with_concept = any(p.concept is not None for p in pairs)

    def record(p: PromptPair) -> dict[str, str]:
        row = {target_key: p.target, anchor_key: p.anchor}
        if with_concept:
            row["concept"] = p.concept or ""
        return row

    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps([record(p) for p in pairs], ensure_ascii=False, indent=2) + "\n"
    elif suffix == ".jsonl":
        text = "".join(json.dumps(record(p), ensure_ascii=False) + "\n" for p in pairs)
    else:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=list(record(pairs[0])) if pairs else [target_key, anchor_key], lineterminator="\n")
        writer.writeheader()
        writer.writerows(record(p) for p in pairs)
        text = buffer.getvalue()
    return atomic_write_text(text, path)
