"""Zero-shot concept detection and image–text similarity with a CLIP model from transformers.

A concept's score for an image is CLIP's two-way softmax between the concept's text and a
neutral text, at the model's own logit scale: ``softmax(s·[cos(x, t_c), cos(x, t_0)])[0]`` with
``s = exp(logit_scale)`` (100 for OpenAI's CLIPs). With several templates the concept's text
embedding is the normalised mean of the templates' embeddings (CLIP's prompt ensembling).

Images are preprocessed in torch as CLIP's processor does (resize the short side with bicubic
filtering, centre crop, normalise with the processor's mean and std), so torchvision is never
needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from varerase.errors import ConfigError
from varerase.evaluation.detectors.base import ConceptDetector, state_dict_sha256

# OpenAI CLIP's image statistics, used when a checkpoint has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _image_statistics(source: str, local: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` from the checkpoint's ``preprocessor_config.json``, else CLIP's."""
    from transformers.utils import cached_file

    path = cached_file(source, "preprocessor_config.json", local_files_only=local, _raise_exceptions_for_missing_entries=False)
    if path is None:
        return CLIP_MEAN, CLIP_STD
    config = json.loads(Path(path).read_text(encoding="utf-8"))
    return tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD))


def _pooled(output: Any) -> torch.Tensor:
    """transformers 4 returns the projected embedding; 5 returns an output with it in ``pooler_output``."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipZeroShotDetector(ConceptDetector):
    """CLIP zero-shot detector over named concepts.

    ``concepts`` maps each concept name to the phrase put into the templates (a plain sequence
    uses the names themselves). ``templates`` contain ``{concept}``. Build one with
    :meth:`from_pretrained`, or pass a ``transformers.CLIPModel`` and its tokenizer directly.
    """

    name = "clip_zero_shot"
    version = "1"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        concepts: Mapping[str, str] | Sequence[str],
        templates: Sequence[str] = ("a photo of {concept}",),
        neutral: str = "a photo",
        threshold: float = 0.5,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        source: str = "in-memory",
    ) -> None:
        phrases = dict(concepts) if isinstance(concepts, Mapping) else {c: c for c in concepts}
        if not phrases:
            raise ConfigError("name at least one concept for the CLIP detector")
        if not templates or any("{concept}" not in t for t in templates):
            raise ConfigError(f"every template needs a '{{concept}}' slot, got {list(templates)}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.phrases = phrases
        self.templates = tuple(templates)
        self.neutral = neutral
        self.threshold = threshold
        self.source = source
        self.image_size = int(model.config.vision_config.image_size)
        self._mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self._concept_texts: torch.Tensor | None = None
        self._sha256: str | None = None

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, concepts: Mapping[str, str] | Sequence[str], device: torch.device | str = "cpu", **kwargs: Any
    ) -> "ClipZeroShotDetector":
        """Load model, tokenizer and image statistics from a hub id or a local folder (a local
        folder never touches the network). ``kwargs`` go to the constructor."""
        from transformers import AutoTokenizer, CLIPModel

        source = str(name_or_path)
        local = Path(source).is_dir()
        model = CLIPModel.from_pretrained(source, local_files_only=local).to(device)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        mean, std = _image_statistics(source, local)
        return cls(model, tokenizer, concepts, image_mean=mean, image_std=std, source=source, **kwargs)

    @property
    def concepts(self) -> tuple[str, ...]:
        return tuple(self.phrases)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float ``[B, 3, H, W]`` in [0, 1] → normalised ``[B, 3, S, S]`` with ``S = image_size``:
        short side resized to ``S`` (bicubic, antialiased), then centre-cropped."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        images = images.detach().to(self.device, torch.float32)
        h, w = images.shape[-2:]
        size = self.image_size
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        if (new_h, new_w) != (h, w):
            images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        images = images[..., top : top + size, left : left + size]
        return (images - self._mean.to(self.device)) / self._std.to(self.device)

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``[B, D]`` of float ``images`` ``[B, 3, H, W]`` in [0, 1]."""
        embedded = _pooled(self.model.get_image_features(pixel_values=self.preprocess(images)))
        return F.normalize(embedded.float(), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``[T, D]``."""
        max_length = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return F.normalize(_pooled(self.model.get_text_features(**tokens)).float(), dim=-1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Features for FID/KID and diversity: the image embeddings ``[B, D]``."""
        return self.image_embeddings(images)

    def _texts(self) -> torch.Tensor:
        """``[C + 1, D]``: one (template-averaged) embedding per concept, then the neutral text."""
        if self._concept_texts is None:
            rows = []
            for phrase in self.phrases.values():
                per_template = self.text_embeddings([t.format(concept=phrase) for t in self.templates])
                rows.append(F.normalize(per_template.mean(dim=0), dim=-1))
            rows.append(self.text_embeddings([self.neutral])[0])
            self._concept_texts = torch.stack(rows)
        return self._concept_texts

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{concept: [B]}``: softmax probability of the concept against the neutral text."""
        texts = self._texts()
        cosines = self.image_embeddings(images) @ texts.T  # [B, C + 1]
        logits = self.logit_scale * cosines
        out = {}
        for i, concept in enumerate(self.phrases):
            pair = torch.stack([logits[:, i], logits[:, -1]], dim=-1)
            out[concept] = pair.softmax(dim=-1)[:, 0].cpu()
        return out

    def weights_hash(self) -> str:
        if self._sha256 is None:
            self._sha256 = state_dict_sha256(self.model)
        return self._sha256

    def describe(self) -> dict:
        return {
            **super().describe(),
            "source": self.source,
            "phrases": dict(self.phrases),
            "templates": list(self.templates),
            "neutral": self.neutral,
            "logit_scale": self.logit_scale,
            "image_size": self.image_size,
            "score": "softmax over [concept, neutral] of logit_scale × cosine",
        }
