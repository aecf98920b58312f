"""Adversarial prompt attacks on erased models, scored by attack success rate (METHODS.md §7)."""

from varerase.evaluation.attacks.base import Attack
from varerase.evaluation.attacks.config import AttackConfig
from varerase.evaluation.attacks.registry import ATTACKS, attack_class, run_attack
from varerase.evaluation.attacks.result import AttackResult, attack_success_rate, save_attack

__all__ = ["ATTACKS", "Attack", "AttackConfig", "AttackResult", "attack_class", "attack_success_rate", "run_attack", "save_attack"]
