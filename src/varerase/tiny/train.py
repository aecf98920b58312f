"""Training the built-in tiny model from scratch, deterministically from a seed.

Four phases, each on the synthetic world (``varerase.data.world``):

1. tokenizer — the Infinity bitwise VAE at a tiny size, MSE reconstruction through BSQ;
2. detector — the world's concept detector, on clean images *and* tokenizer reconstructions
   (a detector trained on clean images only misreads generated ones);
3. transformer — the Infinity transformer at a tiny size, teacher-forced bitwise CE on the
   tokenizer's maps of the images, with condition dropout (text → the learned ``cfg_uncond``)
   so that classifier-free guidance works;
4. quality — the table of ``varerase.tiny.quality`` on held-out prompts.

The result is a folder that ``load_model(path)`` reads; ``varerase train-tiny --out DIR`` runs it,
``--set transformer.width=256`` changes a setting (:func:`tiny_training_config`) and ``--device cuda``
trains on a GPU. Training is deterministic for a seed, a config and a device; a GPU's kernels give
other weights than the CPU's.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from varerase.config import dataclass_from_dict
from varerase.data.world_rendering import WorldConfig, WorldDataset, make_dataset, to_float_images
from varerase.errors import ConfigError
from varerase.evaluation.detectors.world_detector import WorldDetector, WorldDetectorConfig, train_world_detector
from varerase.io import atomic_write_json
from varerase.models.base import SamplerConfig, TextCondition
from varerase.models.infinity.model import InfinityModel
from varerase.models.infinity.transformer import InfinityConfig, InfinityTransformer
from varerase.models.infinity.vae import BitwiseVAE, BitwiseVAEConfig, tiny_vae_config
from varerase.models.text import load_minilm
from varerase.runtime.progress import progress_bar
from varerase.tiny.train_state import STATE_FOLDER, SavedTraining, TransformerProgress, load_training_state, save_training_state
from varerase.training.trainer import seed_everything

TINY_SCHEDULE = [(1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8)]


def tiny_transformer_config() -> InfinityConfig:
    """The built-in model's transformer: Infinity's architecture at width 128, depth 4."""
    return InfinityConfig(
        depth=4, width=128, num_heads=4, mlp_ratio=4.0, ffn_multiple=64, text_channels=384,
        text_max_length=32, text_pool_heads=4, bits=tiny_vae_config().bits, schedule=TINY_SCHEDULE,
        block_chunks=1,
    )


TINY_DEFAULT_SAMPLER = SamplerConfig(cfg=3.0, temperature=1.0, top_k=0, top_p=0.0)


@dataclass
class TinyTrainingConfig:
    """Budgets of the four phases (defaults: about an hour on 2 CPU cores, most of it the transformer's).

    The world with styles and two-object scenes needs more images and tokenizer steps than the
    one-object world did (20k images, 800 steps): the tokenizer must also reproduce the styles'
    looks (mosaic's grout lines are the hardest) and small objects.

    ``tokenizer`` and ``transformer`` are the two networks' architectures (the shipped ones by
    default); the transformer predicts the tokenizer's bits, so their ``bits`` must agree.
    ``world`` is how the training images are drawn (``WorldConfig``: object sizes, the share of
    two-object and styled scenes); its images are drawn from ``seed`` (``world.seed`` is unused
    and cannot be set) at the schedule's 32 px.
    """

    seed: int = 0
    train_images: int = 30_000
    tokenizer_steps: int = 1200
    tokenizer_batch: int = 64
    tokenizer_lr: float = 2e-3
    detector_steps: int = 4000
    # Every training image's reconstruction, not the default 5000: with 5000, accuracy on
    # reconstructions stopped at 95% (shape) while clean images reached 99%.
    detector: WorldDetectorConfig = field(default_factory=lambda: WorldDetectorConfig(num_reconstructions=30_000))
    transformer_steps: int = 5000
    transformer_batch: int = 64
    transformer_lr: float = 2e-3
    transformer_warmup: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 2.0
    condition_dropout: float = 0.1
    tokenizer: BitwiseVAEConfig = field(default_factory=tiny_vae_config)
    transformer: InfinityConfig = field(default_factory=tiny_transformer_config)
    world: WorldConfig = field(default_factory=WorldConfig)

    def __post_init__(self) -> None:
        if self.transformer.bits != self.tokenizer.bits:
            raise ConfigError(
                f"the transformer predicts {self.transformer.bits} bits per token but the tokenizer has {self.tokenizer.bits}; "
                "set both (transformer.bits, tokenizer.bits)"
            )
        if [tuple(s) for s in self.transformer.schedule] != TINY_SCHEDULE:
            # Every phase encodes the world's 32 px images at TINY_SCHEDULE, the tokenizer's 8×8 latent grid.
            raise ConfigError(f"the built-in model's schedule is fixed at {TINY_SCHEDULE} (the world's 32 px images); transformer.schedule cannot change")
        if self.world.image_size != 32:
            raise ConfigError(f"the built-in model's world is drawn at 32 px (its schedule's size); world.image_size cannot be {self.world.image_size}")


def tiny_training_config(settings: Mapping[str, Any] | None = None, **base: Any) -> TinyTrainingConfig:
    """``TinyTrainingConfig(**base)`` with ``settings`` laid over it; dotted keys reach the nested
    configs (``transformer.width``, ``tokenizer.base_channels``, ``detector.learning_rate``,
    ``world.two_object_fraction``).

    Unknown keys and ill-typed values are ConfigErrors naming the key, as are a transformer and a
    tokenizer whose ``bits`` disagree (set both) and ``world.seed`` (the world is drawn from ``seed``).
    """
    tree = asdict(TinyTrainingConfig(**base))
    for key, value in (settings or {}).items():
        if key == "world.seed":
            raise ConfigError("train-tiny setting 'world.seed': the training images are drawn from seed; set seed instead")
        *groups, leaf = key.split(".")
        node = tree
        for depth, group in enumerate(groups):
            if not isinstance(node.get(group), dict):
                where, known = ".".join(groups[: depth + 1]), [name for name, value in node.items() if isinstance(value, dict)]
                raise ConfigError(f"train-tiny setting {key!r}: {where!r} is not a group of settings; the groups are {known}")
            node = node[group]
        node[leaf] = value
    return dataclass_from_dict(TinyTrainingConfig, tree, "train-tiny settings")


def _set_learning_rate(optimizer: torch.optim.Optimizer, peak: float, step: int, total: int, warmup: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = peak * _cosine_with_warmup(step, total, warmup)


def _cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_tokenizer(images: np.ndarray, config: TinyTrainingConfig, progress: bool = True, device: torch.device | str = "cpu") -> tuple[BitwiseVAE, dict]:
    """Phase 1: the tiny bitwise VAE. ``images`` uint8 ``[N, 32, 32, 3]``. Returns the VAE (on ``device``) and its validation PSNR."""
    torch.manual_seed(config.seed)
    vae = BitwiseVAE(config.tokenizer).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.tokenizer_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    val = to_float_images(images[-256:]).to(device) * 2 - 1
    train = images[:-256]
    with progress_bar(progress, with_info=True) as bar:
        task = bar.add_task("tokenizer", total=config.tokenizer_steps, info="")
        for step in range(config.tokenizer_steps):
            _set_learning_rate(optimizer, config.tokenizer_lr, step, config.tokenizer_steps, 50)
            index = torch.randint(len(train), (config.tokenizer_batch,), generator=generator)
            batch = to_float_images(train[index.numpy()]).to(device) * 2 - 1
            reconstruction, _ = vae(batch, TINY_SCHEDULE)
            loss = F.mse_loss(reconstruction, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(task, advance=1, info=f"mse={loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        mse = F.mse_loss(vae.reconstruct(val, TINY_SCHEDULE), val).item()
    return vae, {"val_mse": mse, "val_psnr_db": 10 * math.log10(4 / mse)}


@torch.no_grad()
def encode_dataset(vae: BitwiseVAE, images: np.ndarray, batch_size: int = 512) -> list[torch.Tensor]:
    """All images → bit maps per scale, uint8 ``[N, h, w, d]`` on the CPU (encoded on ``vae``'s device)."""
    device = next(vae.parameters()).device
    per_scale: list[list[torch.Tensor]] = [[] for _ in TINY_SCHEDULE]
    for start in range(0, len(images), batch_size):
        batch = to_float_images(images[start : start + batch_size]).to(device) * 2 - 1
        for k, bits in enumerate(vae.encode_maps(batch, TINY_SCHEDULE)):
            per_scale[k].append(bits.to("cpu", torch.uint8))
    return [torch.cat(chunks) for chunks in per_scale]


def train_transformer(
    model: InfinityModel,
    maps: list[torch.Tensor],
    captions: list[str],
    config: TinyTrainingConfig,
    progress: bool = True,
    resume_from: TransformerProgress | None = None,
    on_checkpoint: Callable[[TransformerProgress], object] | None = None,
    checkpoint_every: int = 200,
) -> dict:
    """Phase 3: teacher-forced bitwise CE with condition dropout. Trains ``model.transformer`` in place,
    on the model's device; ``maps`` (uint8 ``[N, h, w, d]`` per scale) stay on the CPU and go over per batch.

    ``resume_from`` continues a phase saved part-way: from its weights, optimiser and generator
    states, the same steps follow as without the break. ``on_checkpoint`` receives the phase's
    progress every ``checkpoint_every`` steps (not after the last one)."""
    transformer = model.transformer
    device = model.device
    transformer.train().requires_grad_(True)
    decay = [p for p in transformer.parameters() if p.ndim >= 2]
    no_decay = [p for p in transformer.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.transformer_lr, betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(config.seed + 1)
    losses: list[float] = []
    if resume_from is not None:
        transformer.load_state_dict(resume_from.weights)
        optimizer.load_state_dict(resume_from.optimizer)
        generator.set_state(resume_from.generator)
        torch.set_rng_state(resume_from.torch_rng)
        losses = list(resume_from.losses)
    with progress_bar(progress, with_info=True) as bar:
        task = bar.add_task("transformer", total=config.transformer_steps, completed=len(losses), info="")
        for step in range(len(losses), config.transformer_steps):
            _set_learning_rate(optimizer, config.transformer_lr, step, config.transformer_steps, config.transformer_warmup)
            index = torch.randint(len(captions), (config.transformer_batch,), generator=generator)
            batch_maps = [m[index].to(device).long() for m in maps]
            with torch.no_grad():
                cond = model.encode_text([captions[i] for i in index.tolist()]).to(device)
            drop = (torch.rand(len(index), generator=generator) < config.condition_dropout).to(device)
            null = transformer.null_features(cond)
            features = torch.where(drop[:, None, None], null.features, cond.features)
            prepared = transformer.prepare_condition(TextCondition(features, cond.mask))
            logits = transformer.teacher_forced_logits(prepared, batch_maps)
            targets = torch.cat([m.flatten(1, 2) for m in batch_maps], dim=1)
            loss = F.cross_entropy(logits.flatten(0, 2), targets.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(transformer.parameters(), config.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            bar.update(task, advance=1, info=f"bit-CE={loss.item():.4f}")
            if on_checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < config.transformer_steps:
                on_checkpoint(TransformerProgress(transformer.state_dict(), optimizer.state_dict(), generator.get_state(), torch.get_rng_state(), losses))
    transformer.eval().requires_grad_(False)
    return {"final_bit_ce": float(np.mean(losses[-50:]))}


# The world of train-tiny folders written before training.json recorded one (the small-pairs model,
# shipped until issue 21's sixth session, among them): spelt out, so that they keep it now that
# WorldConfig's defaults are the larger pairs'.
UNRECORDED_WORLD = WorldConfig(min_pair_radius=0.18, max_pair_radius=0.23, two_object_fraction=0.3)


def trained_world(folder: str | Path) -> WorldConfig:
    """The ``WorldConfig`` that the ``train-tiny`` folder's images were drawn with, read from its
    ``training.json``: ``UNRECORDED_WORLD`` where the file has no ``world`` record (written before
    ``world`` was a setting), the default world where there is no such file (not a ``train-tiny`` folder)."""
    record = Path(folder) / "training.json"
    if not record.is_file():
        return WorldConfig()
    settings = json.loads(record.read_text()).get("config", {}).get("world")
    return UNRECORDED_WORLD if settings is None else dataclass_from_dict(WorldConfig, settings, f"{record.name}: world")


def new_tiny_model(config: TinyTrainingConfig, vae: BitwiseVAE, device: torch.device | str = "cpu") -> InfinityModel:
    """An untrained transformer of ``config`` (initialised from ``config.seed + 2``) with ``vae`` and the MiniLM text encoder, on ``device``."""
    torch.manual_seed(config.seed + 2)
    encoder = load_minilm(max_length=config.transformer.text_max_length)
    return InfinityModel(InfinityTransformer(config.transformer), vae, encoder, default_sampler=TINY_DEFAULT_SAMPLER).to(device)


def train_detector(
    world: WorldDataset, vae: BitwiseVAE, config: TinyTrainingConfig, progress: bool = True, device: torch.device | str = "cpu"
) -> tuple[WorldDetector, dict]:
    """Phase 2: the world detector (on ``device``, where ``vae`` is) on ``world``'s images and their reconstructions by ``vae``.

    Draws nothing from the global random state (the detector forks it and has its own
    generator), so the transformer phase after it does not depend on the detector's settings.
    """

    def reconstruct(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ((vae.reconstruct(images * 2 - 1, TINY_SCHEDULE) + 1) / 2).clamp(0, 1)

    return train_world_detector(
        config.detector, world.images, world.labels, reconstruct=reconstruct,
        steps=config.detector_steps, seed=config.seed, progress=progress, device=device,
    )


def train_tiny(
    out_dir: str | Path, config: TinyTrainingConfig | None = None, progress: bool = True, device: torch.device | str = "cpu",
    resume: bool = False, checkpoint_every: int = 200,
) -> dict:
    """Run all phases on ``device`` and write the model folder (``config.json``, ``transformer.safetensors``,
    ``vae.safetensors``, ``detector.safetensors``, ``training.json``). Returns the training metrics.

    Resumable: ``out_dir/state/`` keeps the finished phases and, every ``checkpoint_every`` steps,
    the transformer's progress (:mod:`varerase.tiny.train_state`); ``resume=True`` continues from
    it with the same config and device kind, to the same weights as a run without a break (the
    world's images are drawn again from the seed). The state is removed once the folder is written.
    A folder with a state and ``resume=False``, or with a finished model and ``resume=True``, is a ConfigError.
    """
    config = config or TinyTrainingConfig()
    out_dir = Path(out_dir)
    console = Console(quiet=not progress)
    seed_everything(config.seed)
    record = {"config": json.loads(json.dumps(asdict(config))), "device": torch.device(device).type, "metrics": {}, "seconds": {}}
    saved = _saved_training(out_dir, record, resume, BitwiseVAE(config.tokenizer), device)
    if saved is not None:
        record = {**saved.progress, "resumes": saved.progress.get("resumes", 0) + 1}
        record.pop("losses")
        step = len(saved.transformer.losses) if saved.transformer else 0
        console.print(f"resuming {out_dir}: {', '.join(record['metrics'])} done, the transformer at step {step}")
    metrics, seconds = record["metrics"], record["seconds"]

    start = time.perf_counter()
    world = make_dataset(config.train_images, seed=config.seed, split="train", config=config.world)
    seconds.setdefault("data", round(time.perf_counter() - start, 1))
    console.print(f"world: {len(world.captions)} captioned images in {time.perf_counter() - start:.1f} s")

    if saved is not None:
        vae = saved.vae
    else:
        start = time.perf_counter()
        vae, metrics["tokenizer"] = train_tokenizer(world.images, config, progress, device)
        seconds["tokenizer"] = round(time.perf_counter() - start, 1)
        console.print(f"tokenizer: PSNR {metrics['tokenizer']['val_psnr_db']:.1f} dB in {seconds['tokenizer']:.0f} s")
        save_training_state(out_dir, record, vae)

    if saved is not None and saved.detector is not None:
        detector = saved.detector
    else:
        start = time.perf_counter()
        detector, metrics["detector"] = train_detector(world, vae, config, progress, device)
        detector = detector.to("cpu")  # from here on it is only saved
        seconds["detector"] = round(time.perf_counter() - start, 1)
        console.print(f"detector: {metrics['detector']} in {seconds['detector']:.0f} s")
        save_training_state(out_dir, record, vae, detector)

    start, earlier = time.perf_counter(), seconds.get("transformer", 0.0)
    maps = encode_dataset(vae, world.images)
    model = new_tiny_model(config, vae, device)

    def checkpoint(transformer: TransformerProgress) -> None:
        seconds["transformer"] = round(earlier + time.perf_counter() - start, 1)
        save_training_state(out_dir, record, vae, detector, transformer)

    metrics["transformer"] = train_transformer(
        model, maps, world.captions, config, progress, saved.transformer if saved else None, checkpoint, checkpoint_every
    )
    seconds["transformer"] = round(earlier + time.perf_counter() - start, 1)
    console.print(f"transformer: bit-CE {metrics['transformer']['final_bit_ce']:.4f} in {seconds['transformer']:.0f} s")

    model.to("cpu").save_pretrained(out_dir)
    detector.save(out_dir / "detector.safetensors")
    # device: the kind only, since a GPU's kernels give other weights than the CPU's
    training = {"config": asdict(config), **metrics, "device": record["device"], "seconds": seconds}
    if "resumes" in record:
        training["resumes"] = record["resumes"]
    atomic_write_json(training, out_dir / "training.json")
    shutil.rmtree(out_dir / STATE_FOLDER, ignore_errors=True)
    return training


def _saved_training(out_dir: Path, record: dict, resume: bool, vae: BitwiseVAE, device: torch.device | str) -> SavedTraining | None:
    """The state a run continues from (None: start afresh), after the checks of :func:`train_tiny`'s docstring."""
    has_state = (out_dir / STATE_FOLDER).is_dir()
    if not resume:
        if has_state:
            raise ConfigError(f"{out_dir} holds an unfinished train-tiny ({STATE_FOLDER}/); pass --resume to continue it or choose another --out")
        return None
    if not has_state:
        if (out_dir / "training.json").exists():
            raise ConfigError(f"{out_dir} holds a finished model, nothing to resume; choose another --out")
        return None
    saved = load_training_state(out_dir, vae, device)
    if saved is None:
        return None
    if saved.progress.get("device") != record["device"]:
        raise ConfigError(f"{out_dir} was started on {saved.progress.get('device')}, not {record['device']}; resume it there or choose another --out")
    changed = sorted(key for key, value in record["config"].items() if saved.progress.get("config", {}).get(key) != value)
    if changed:
        raise ConfigError(f"{out_dir} was started with other settings ({', '.join(changed)}); resume with the same ones or choose another --out")
    return saved
