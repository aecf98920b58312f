"""Attack names → :class:`Attack` classes, and :func:`run_attack`, the one call the CLI makes."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from varerase.errors import ConfigError
from varerase.evaluation.attacks.base import Attack
from varerase.evaluation.attacks.config import AttackConfig
from varerase.evaluation.attacks.paraphrase import ParaphraseAttack
from varerase.evaluation.attacks.result import AttackResult, save_attack
from varerase.evaluation.attacks.ring_a_bell import RingABellAttack
from varerase.evaluation.attacks.soft_prompt import SoftPromptAttack
from varerase.evaluation.attacks.unlearndiff import UnlearnDiffAttack
from varerase.evaluation.detectors.base import ConceptDetector
from varerase.models.base import SamplerConfig, ScaleWiseModel
from varerase.runtime.distributed import DistributedContext

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (ParaphraseAttack, RingABellAttack, UnlearnDiffAttack, SoftPromptAttack)}


def attack_class(name: str) -> type[Attack]:
    """The attack called ``name`` (case and ``_``/``-`` ignored); an unknown name suggests the nearest."""
    key = name.strip().lower().replace("_", "-")
    if key not in ATTACKS:
        near = difflib.get_close_matches(key, ATTACKS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"unknown attack {name!r}; {hint}known: {', '.join(ATTACKS)}")
    return ATTACKS[key]


def run_attack(
    name: str,
    model: ScaleWiseModel,
    concept: str,
    detector: ConceptDetector,
    sampler: SamplerConfig,
    out_dir: str | Path,
    config: AttackConfig | dict[str, Any] | None = None,
    progress: bool = True,
    context: DistributedContext | None = None,
) -> AttackResult:
    """Run attack ``name`` on ``model`` for ``concept`` and write ``attack.json`` (+ ``attack_images.png``) into ``out_dir``.

    ``config``: the attack's config dataclass, a dict of its settings, or None for defaults.
    Under ``torchrun`` (``context``, default: joined from the environment) the ranks share the
    searches and generations and all return the single-process result; rank 0 writes.
    """
    context = context or DistributedContext.from_environment()
    result = attack_class(name)(config).run(model, concept, detector, sampler, progress=progress, context=context)
    if context.is_main:
        save_attack(result, out_dir)
    return result
