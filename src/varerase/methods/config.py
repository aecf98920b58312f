"""An erase run's settings tree: :class:`MethodConfig` with its ``training`` and ``edit`` sections.

The tree is typed (dataclasses all the way down) and saved, nested, in every run's ``config.yaml``.
Settings arrive from presets, YAML files and ``--set`` in either form:

* flat — ``lr: 1e-3``, ``lora_rank: 4``, ``rho: 0.1``: a key names a setting of the method itself
  or of one of its sections (:data:`SECTIONS`; no name is used twice), or one of the method's
  :attr:`MethodConfig.aliases`;
* nested — ``training: {lr: 1e-3}``, ``edit: {lora_rank: 4}``.

:meth:`MethodConfig.from_settings` lays such mappings over the defaults, in order, and builds the
config once; an unknown key is a ConfigError naming it and listing the known ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Mapping

from varerase.config import MAX_BATCH_SIZE, check_int, check_seed, dataclass_from_dict
from varerase.edits.delta import EditConfig, EditScope
from varerase.errors import ConfigError
from varerase.models.base import SamplerConfig, ScaleWiseModel
from varerase.training.trainer import TrainerConfig

SECTIONS: dict[str, type] = {"training": TrainerConfig, "edit": EditConfig}


@dataclass
class MethodConfig:
    """Settings every method has: ``training`` (the loop), ``edit`` (what changes) and the method's own.

    Subclasses add their own settings and may change defaults, sections included. ``seed`` fixes
    the run's randomness (batches, dropout, initial LoRA factors). ``generation_cfg``,
    ``top_k``/``top_p`` and ``aux_seed`` fix how the frozen model generates auxiliary tokens
    (METHODS.md §1; reference: CFG 4, temperature 1, top-k 900, top-p 0.97, seed 42).
    ``top_k``/``top_p`` left at None take the model's own sampler's values
    (``model.default_sampler``: top-k 900 / top-p 0.97 for Infinity-2B/8B, both off for the
    built-in tiny model), resolved in :meth:`aux_sampler`; 0 turns each off. ``edit.scope``
    belongs to the method (:attr:`edit_scope`); another value is refused. ``training``'s
    ``update_precision="bfloat16"`` rounds full deltas only, so it refuses LoRA edits.
    """

    edit_scope: ClassVar[EditScope] = "all"
    aliases: ClassVar[dict[str, str]] = {}  # other flat names of settings: alias → flat key

    training: TrainerConfig = field(default_factory=TrainerConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    seed: int = 42
    batch_size: int = 2
    generation_cfg: float = 4.0
    top_k: int | None = None  # None: the model's default sampler's
    top_p: float | None = None  # None: the model's default sampler's
    aux_seed: int = 42
    samples_per_pair: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):  # batch_size, benign_batch_size …: capped, so that a typo fails here and not in allocation
            if f.name.endswith("batch_size") or f.name == "samples_per_pair":
                check_int(getattr(self, f.name), f.name, 1, MAX_BATCH_SIZE)
        check_seed(self.seed, "seed")
        check_seed(self.aux_seed, "aux_seed")
        if self.generation_cfg < 0:
            raise ConfigError(f"generation_cfg must be ≥ 0, got {self.generation_cfg}")
        if self.generation_cfg > SamplerConfig.MAX_CFG:
            raise ConfigError(f"generation_cfg must be ≤ {SamplerConfig.MAX_CFG:g} (reference: 4), got {self.generation_cfg:g}")
        if self.training is not None and self.training.update_precision != "float32" and self.edit.lora_rank:
            raise ConfigError(
                f"update_precision={self.training.update_precision!r} rounds the merged weights W + Δ of full edits; a LoRA "
                "edit's B·A cannot follow that rounding: use lora_rank=0 or update_precision=float32"
            )
        if self.edit.scope != self.edit_scope:
            raise ConfigError(f"this method's edit has scope {self.edit_scope!r}; leave scope unset (got {self.edit.scope!r})")

    def aux_sampler(self, model: ScaleWiseModel) -> SamplerConfig:
        """How the frozen ``model`` samples auxiliary tokens (METHODS.md §1): CFG ``generation_cfg``,
        temperature 1, ``top_k``/``top_p`` where set, else those of ``model.default_sampler``."""
        default = model.default_sampler
        top_k = default.top_k if self.top_k is None else self.top_k
        top_p = default.top_p if self.top_p is None else self.top_p
        return SamplerConfig(cfg=self.generation_cfg, temperature=1.0, top_k=top_k, top_p=top_p)

    def to_dict(self) -> dict[str, Any]:
        """The settings tree as nested plain data (what ``config.yaml`` holds)."""
        return asdict(self)

    @classmethod
    def flat_keys(cls) -> dict[str, tuple[str, ...]]:
        """Every flat key (aliases included) → its path in the tree: ``("rho",)``, ``("training", "lr")``."""
        keys = {sub.name: (f.name, sub.name) for f in fields(cls) if f.name in SECTIONS for sub in fields(SECTIONS[f.name])}
        keys.update({f.name: (f.name,) for f in fields(cls) if f.name not in SECTIONS})
        keys.update({alias: keys[target] for alias, target in cls.aliases.items()})
        return keys

    @classmethod
    def from_settings(cls, *layers: tuple[Any, str], source: str | None = None) -> "MethodConfig":
        """The defaults with each ``(settings, name)`` laid over them in turn, flat or nested (see module docstring).

        A layer's ``name`` (a file, a preset) labels its unknown keys; ``source`` labels ill-typed
        or out-of-range values of the result. Both are ConfigErrors naming the setting.
        """
        tree = cls().to_dict()
        for settings, name in layers:
            _lay_over(cls, tree, settings, name)
        return dataclass_from_dict(cls, tree, source or cls.__name__)


def _lay_over(cls: type[MethodConfig], tree: dict[str, Any], settings: Any, source: str) -> None:
    """Write ``settings`` (flat or nested keys) into ``tree`` (``cls``'s settings as nested dicts), in place."""
    if not isinstance(settings, Mapping):
        raise ConfigError(f"{source} must be a mapping of settings, got {type(settings).__name__}")
    keys = cls.flat_keys()
    unknown = sorted(str(k) for k in settings if k not in keys and k not in SECTIONS)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {unknown}; known: {sorted(keys)} (or nested under {sorted(SECTIONS)})")
    for key, value in settings.items():
        if key in SECTIONS and isinstance(value, Mapping):
            known = [f.name for f in fields(SECTIONS[key])]
            unknown = sorted(str(k) for k in value if k not in known)
            if unknown:
                raise ConfigError(f"{source}: unknown {key} setting(s) {unknown}; known: {sorted(known)}")
            tree[key] = {**(tree[key] or {}), **value}
        elif key in SECTIONS or len(keys[key]) == 1:
            tree[key] = value  # a section that is not a mapping: refused (or, where allowed, None) when the tree is built
        else:
            section, name = keys[key]
            tree[section] = {**(tree[section] or {}), name: value}
