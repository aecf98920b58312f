"""Evaluation prompt sets: the built-in world's groups for a concept, and prompt CSV files.

World groups (deterministic, from :func:`varerase.data.concepts.world_concept_prompts`):
``target`` (training templates, naming an erased concept), ``anchor`` (the same prompts with
it replaced), ``retain`` (naming no erased concept), ``heldout`` (target prompts under the
held-out templates, never seen in training) and, when an erased concept is a shape or colour,
``cooccurrence`` (two objects, one named by the erased concept and one naming none, from
:func:`varerase.data.concepts.cooccurrence_prompts`: is the other one still drawn?). The ``paraphrase`` group (the concept named in words
no caption uses) needs the original model to filter it: :mod:`varerase.evaluation.paraphrases`.

CSV files (UTF-8, a BOM allowed; extra columns ignored), recognised by their columns:

* **I2P** (``unsafe-prompts4703.csv`` and copies): ``prompt``, ``evaluation_seed``,
  ``categories`` (comma-separated), ``evaluation_guidance`` …. The Stable Diffusion guidance is
  not used: a VAR model's CFG scale is the sampler's.
* **Six-CD** style: ``prompt`` and optional ``seed`` and ``concept`` (the concept names the group).
* **COCO-30k** captions: ``caption`` or ``prompt``, optional ``evaluation_seed`` / ``seed``;
  ``image_id`` and other columns are ignored.

Every problem is a :class:`~varerase.errors.DataError` naming the file and the 1-based line.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

from varerase.config import MAX_SEED
from varerase.data.concepts import cooccurrence_prompts, heldout_concept_prompts, world_concept_prompts
from varerase.errors import DataError

T = TypeVar("T")
PROMPT_COLUMNS = ("prompt", "caption")
SEED_COLUMNS = ("evaluation_seed", "seed")


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt. ``seed`` fixes its samples (sample ``j`` uses ``seed + j``; None
    lets ``evaluate`` derive seeds from its base seed); ``group`` is the set it is reported in."""

    prompt: str
    seed: int | None = None
    group: str = "prompts"


def spread(items: list[T], limit: int | None) -> list[T]:
    """At most ``limit`` items, evenly spaced over the list (all of them when ``limit`` is None)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def world_prompt_groups(concepts: Sequence[str], max_per_group: int | None = None) -> dict[str, list[EvalPrompt]]:
    """``{"target", "anchor", "retain", "heldout"}`` and, when it has prompts, ``"cooccurrence"``
    → prompts for erasing ``concepts`` from the world (names or synonyms), each group cut to
    ``max_per_group`` evenly spaced prompts."""
    train, heldout = world_concept_prompts(concepts), heldout_concept_prompts(concepts)
    texts = {
        "target": [p.target for p in train.pairs],
        "anchor": [p.anchor for p in train.pairs],
        "retain": list(train.retain),
        "heldout": [p.target for p in heldout.pairs],
    }
    cooccurrence = cooccurrence_prompts(concepts)
    if cooccurrence:
        texts["cooccurrence"] = cooccurrence
    return {group: [EvalPrompt(t, None, group) for t in spread(rows, max_per_group)] for group, rows in texts.items()}


def _seed(text: str, where: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = int(text) if text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise DataError(f"{where}: seed {text[:40]!r} is not a number") from None
    if not math.isfinite(value) or value != int(value) or not 0 <= value <= MAX_SEED:
        raise DataError(f"{where}: seed {text[:40]!r} must be a non-negative integer below 2**64")
    return int(value)


def load_prompt_csv(
    path: str | Path, group: str | None = None, categories: Sequence[str] | None = None, limit: int | None = None
) -> list[EvalPrompt]:
    """Prompts of an I2P, Six-CD or COCO CSV file (see the module docstring), in file order.

    ``group`` names the group (default: the row's ``concept`` if the file has one, else the
    file's stem). ``categories`` keeps only I2P rows in at least one of them. ``limit`` keeps the
    first prompts.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the prompt file ({error})") from error
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    prompt_column = next((c for c in PROMPT_COLUMNS if c in columns), None)
    if prompt_column is None:
        raise DataError(f"{path}, line 1: no 'prompt' or 'caption' column; found {columns or 'an empty file'}")
    seed_column = next((c for c in SEED_COLUMNS if c in columns), None)
    if categories is not None and "categories" not in columns:
        raise DataError(f"{path}, line 1: categories {list(categories)} asked for, but the file has no 'categories' column")
    wanted = {c.strip().lower() for c in categories or ()}
    prompts: list[EvalPrompt] = []
    line = reader.line_num  # the header's last line
    try:
        for row in reader:
            where, line = f"{path}, line {line + 1}", reader.line_num
            if None in row:
                raise DataError(f"{where}: more fields than the header's {len(columns)}")
            prompt = (row[prompt_column] or "").strip()
            if not prompt:
                raise DataError(f"{where}: empty {prompt_column!r}")
            if wanted and not wanted & {c.strip().lower() for c in (row["categories"] or "").split(",")}:
                continue
            seed = _seed(row[seed_column] or "", where) if seed_column else None
            name = group or (row.get("concept") or "").strip() or path.stem
            prompts.append(EvalPrompt(prompt, seed, name))
            if limit is not None and len(prompts) >= limit:
                break
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: {error}") from error
    if not prompts:
        raise DataError(f"{path}: no prompts" + (f" in categories {sorted(wanted)}" if wanted else ""))
    return prompts


def group_prompts(prompts: Sequence[EvalPrompt]) -> dict[str, list[EvalPrompt]]:
    """``{group: prompts}`` in order of first appearance (the form ``evaluate`` takes)."""
    groups: dict[str, list[EvalPrompt]] = {}
    for prompt in prompts:
        groups.setdefault(prompt.group, []).append(prompt)
    return groups
