"""Prompt files: plain text (one prompt a line) or a CSV with a ``prompt`` column.

Attacks read their paraphrase prompts and extra search words from such files.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from varerase.errors import DataError


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a text file (one a line; blank lines and ``#`` comments skipped) or a CSV with a ``prompt`` column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise DataError(f"cannot read prompt file {path}: {error}") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if "prompt" not in (reader.fieldnames or []):
            raise DataError(f"{path}: a CSV prompt file needs a 'prompt' column; found {reader.fieldnames}")
        prompts = [row["prompt"].strip() for row in reader if (row["prompt"] or "").strip()]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise DataError(f"{path} holds no prompts")
    return prompts
