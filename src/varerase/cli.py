"""The ``varerase`` command line (typer): a thin shell over :mod:`varerase.api`, one api call per verb."""

from __future__ import annotations

import functools
import inspect
import re
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from varerase import api
from varerase.config import clip, parse_assignments
from varerase.errors import VarEraseError, VarEraseWarning
from varerase.imaging import MAX_GRID_IMAGES, generated_folder

app = typer.Typer(
    name="varerase",
    help=(
        "Erase concepts from scale-wise visual autoregressive text-to-image models (Infinity), "
        "evaluate the result, and compare methods. Runs on a CPU with the built-in tiny model."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # never wrap: messages name files and lines
_show_warning = warnings.showwarning


def show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """varerase's warnings as one line on stderr (others as Python prints them)."""
    if issubclass(category, VarEraseWarning):
        errors.print("[yellow]warning:[/yellow] ", end="")
        errors.print(clip(str(message)), markup=False, highlight=False)
    else:
        _show_warning(message, category, *args, **kwargs)


@app.callback()
def _varerase() -> None:
    """Erase concepts from scale-wise visual autoregressive text-to-image models."""
    warnings.showwarning = show_warning

MODEL_HELP = "Model: 'tiny' (built in), 'infinity-2b', 'infinity-8b', or a folder written by save_pretrained."
METHOD_HELP = f"Erasure method: {', '.join(api.METHOD_NAMES)}."
PRESET_HELP = (
    f"Method settings preset: {', '.join(api.PRESET_NAMES)} ('reference': the official S-VARE settings; "
    "'tiny': tuned on the built-in model, used by default with --model tiny)."
)
DETECTOR_HELP = (
    f"Detector: {', '.join(api.detector_names())} (world: a train-tiny folder's own with --model DIR, else the shipped one; "
    "nudenet needs the extra varerase[nudity]; clip needs --clip-model)."
)
PARALLEL_HELP = (
    "Under torchrun: 'ddp' keeps the whole edit on every GPU; 'fsdp' shards the edit, its gradients and optimiser state "
    "(FSDP2), for models whose edit does not fit (docs/distributed.md)."
)
CHECKPOINTING_HELP = (
    "Recompute each transformer block in backward instead of keeping its activations: less GPU memory, about one more forward per step."
)
ATTACK_SET_HELP = (
    "Attack budget/setting as KEY=VALUE, e.g. --set num_prompts=16 (attacks that start from target prompts: ring-a-bell, "
    "unlearndiff, soft-prompt), --set steps=200 (soft-prompt), --set 'search={population: 128, generations: 100}' "
    "(ring-a-bell); repeatable."
)

FORCE_EDIT_HELP = "Apply --edit even if its run is unfinished or it was made for another base model (refused otherwise)."


def force_edit_option() -> Any:
    """The ``--force-edit`` flag of the commands that take ``--edit``."""
    return typer.Option(False, "--force-edit", help=FORCE_EDIT_HELP)


# The flags of every command that loads a model, declared once; a command receives them as one api.ModelOptions.
MODEL_FLAGS: list[tuple[str, Any, Any]] = [
    ("checkpoint", Optional[str], typer.Option(
        None, "--checkpoint", help="Official transformer weights (.pth, safetensors folder or index); default: the hub file.",
    )),
    ("vae", Optional[str], typer.Option(None, "--vae", help="Official VAE weights (.pth); default: the hub file.")),
    ("text_encoder", Optional[str], typer.Option(None, "--text-encoder", help="Flan-T5 hub id or local folder (default google/flan-t5-xl).")),
    ("device", str, typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda.")),
    ("mixed_precision", Optional[str], typer.Option(
        None, "--mixed-precision", help="bfloat16 or float16 autocast for the transformer, or none (float32); default: bfloat16 for "
        "infinity-2b/8b on CUDA, float32 otherwise.",
    )),
    ("attention", Optional[str], typer.Option(
        None, "--attention", help="Teacher forcing's self-attention: auto (FlexAttention on CUDA, SDPA elsewhere), sdpa (dense mask) "
        "or flex (block-sparse; no backward on CPU); default: the model's own (auto).",
    )),
]


def with_model_flags(command: Callable) -> Callable:
    """Give ``command`` the model flags; it receives them as one ``model_options: api.ModelOptions`` argument."""
    signature = inspect.signature(command)
    kept = [p for p in signature.parameters.values() if p.name != "model_options"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind) for name, kind, option in MODEL_FLAGS]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        options = api.ModelOptions(**{name: kwargs.pop(name) for name, _, _ in MODEL_FLAGS})
        return command(*args, model_options=options, **kwargs)

    # typer reads the parameters from the signature and their types from the annotations.
    wrapper.__signature__ = signature.replace(parameters=kept + added)
    hints = {name: kind for name, kind in typing.get_type_hints(command).items() if name != "model_options"}
    wrapper.__annotations__ = {**hints, **{name: kind for name, kind, _ in MODEL_FLAGS}}
    return wrapper


@app.command()
def demo(
    concept: str = typer.Option("circle", "--concept", help="World concept to erase (a shape, colour, background or style: circle, red, striped, sepia …)."),
    method: str = typer.Option("s-vare", "--method", help=METHOD_HELP),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the run and the before/after grid go."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser iterations (method default if unset)."),
) -> None:
    """The main job: erase a concept from the built-in model and show a before/after table and grid."""
    result = api.demo(concept=concept, method=method, out=out, steps=steps)
    table = Table(title=f"{method}: erasing '{concept}' from the built-in model")
    table.add_column("measure")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row(f"'{concept}' present on prompts naming it", f"{result.presence_before:.0%}", f"{result.presence_after:.0%}")
    table.add_row("prompt-following on other prompts", f"{result.following_before:.0%}", f"{result.following_after:.0%}")
    console.print(table)
    console.print(f"before/after grid: {result.grid}   (total {result.seconds:.0f} s)")


@app.command()
@with_model_flags
def erase(
    model: str = typer.Option("tiny", "--model", help=MODEL_HELP),
    method: str = typer.Option("s-vare", "--method", help=METHOD_HELP),
    concept: list[str] = typer.Option([], "--concept", help="A built-in world concept (repeat for multi-concept erasure)."),
    pairs: Optional[Path] = typer.Option(
        None, "--pairs", help="Prompt pairs: JSON/JSONL/CSV with original_prompt/modified_prompt or unsafe_prompt/safe_prompt."
    ),
    out: Path = typer.Option(..., "--out", "--output_dir", help="Run directory to create."),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of method settings (flags override it)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser iterations."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Prompt pairs per step (1 to 1024)."),
    lora_rank: Optional[int] = typer.Option(None, "--rank", "--lora-rank", help="LoRA rank (0: full weights; at most the edited weights' smallest dimension)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run in --out with the same settings (or extend a finished one: more --steps)."
    ),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Steps between resumable states (default 50)."),
    settings: list[str] = typer.Option([], "--set", help="Any method setting as KEY=VALUE (e.g. --set rho=0.25 --set update=joint); repeatable."),
    parallel: str = typer.Option("ddp", "--parallel", help=PARALLEL_HELP),
    activation_checkpointing: bool = typer.Option(False, "--activation-checkpointing", "--gradient_checkpointing", help=CHECKPOINTING_HELP),
    issa: Optional[Path] = typer.Option(
        None, "--issa", help="SACE: a folder of `analyze issa` results; --set scales=auto takes its recommendation, scales=0 warns "
        "when it shows scale 0 prevents little.",
    ),
    model_options: api.ModelOptions = None,
) -> None:
    """Erase a concept: writes config.yaml, edit.safetensors, metrics.json and state/ into --out."""
    flags = dict(steps=steps, lr=lr, batch_size=batch_size, lora_rank=lora_rank, seed=seed, checkpoint_every=checkpoint_every)
    result = api.erase(
        model, method=method, concepts=concept, pairs=pairs, out=out, preset=preset, resume=resume, config_file=config,
        parallel=parallel, activation_checkpointing=activation_checkpointing, issa=issa, model_options=model_options,
        **{**parse_assignments(settings), **{k: v for k, v in flags.items() if v is not None}},
    )
    metrics = result.metrics
    if not api.is_main_process():
        return
    console.print(f"[green]done[/green]: {metrics['steps']} steps in {metrics['wall_seconds']:.1f} s, "
                  f"{metrics['forward_tokens']:,} forward tokens → {out / 'edit.safetensors'}")


@app.command()
@with_model_flags
def generate(
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="Prompt (repeat for several)."),
    model: str = typer.Option("tiny", "--model", help=MODEL_HELP),
    n: int = typer.Option(4, "-n", "--num-images", help="Images per prompt."),
    seed: int = typer.Option(0, "--seed", help="Image j of a prompt uses seed + j."),
    out: Path = typer.Option(
        Path("grid.png"), "--out", help="PNG grid to write (one row per prompt); over 64 images, a grid of the first and each image in a folder next to it."
    ),
    edit: Optional[Path] = typer.Option(None, "--edit", help="A run directory (or edit.safetensors) to apply."),
    force_edit: bool = force_edit_option(),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="Classifier-free guidance (model default if unset)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Top-k per unit (0: off)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Top-p per unit (0: off)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature."),
    negative_prompt: Optional[str] = typer.Option(
        None, "--negative-prompt", help="Guide away from this text instead of the empty prompt (the unconditional branch of CFG)."
    ),
    model_options: api.ModelOptions = None,
) -> None:
    """Generate images and save them as a grid."""
    images = api.generate(
        model, prompt, n=n, seed=seed, edit=edit, force_edit=force_edit, out=out, model_options=model_options, negative_prompt=negative_prompt,
        cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature,
    )
    if len(images) > MAX_GRID_IMAGES:
        console.print(f"wrote {len(images)} images to {generated_folder(out)}/ and a grid of the first ones to {out}")
    else:
        console.print(f"wrote {len(images)} images to {out}")


@app.command()
@with_model_flags
def evaluate(
    model: str = typer.Option("tiny", "--model", help=MODEL_HELP),
    edit: Optional[Path] = typer.Option(None, "--edit", help="Run directory of an erasure: compare edited vs original."),
    force_edit: bool = force_edit_option(),
    concept: list[str] = typer.Option([], "--concept", help="World concept(s) to measure (built-in model)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt CSV (I2P, Six-CD or COCO-30k columns)."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json, grids and report.html."),
    detector: str = typer.Option("world", "--detector", help=DETECTOR_HELP),
    clip_model: Optional[str] = typer.Option(None, "--clip-model", help="CLIP hub id or folder for --detector clip."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Detector threshold in [0, 1] (detector default if unset)."),
    samples: int = typer.Option(2, "--samples", help="Images per prompt."),
    max_per_group: Optional[int] = typer.Option(24, "--max-per-group", help="Prompts per group (evenly spaced)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per generation batch, 1 to 1024 (on CUDA, fewer when they would not fit)."),
    seed: int = typer.Option(0, "--seed", help="Base seed (prompts with their own seed keep it)."),
    paraphrases: bool = typer.Option(
        True, "--paraphrases/--no-paraphrases", help="World concepts: add the paraphrase group (unseen words the original model draws as the concept)."
    ),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="Classifier-free guidance (model default if unset)."),
    model_options: api.ModelOptions = None,
) -> None:
    """Evaluate a model (or an edit against its original): presence, erasure, prompt-following, FID/KID, report."""
    metrics = api.evaluate(
        model, edit=edit, force_edit=force_edit, concepts=concept, prompts_file=prompts, out=out, detector=detector, clip_model=clip_model,
        threshold=threshold, samples_per_prompt=samples, max_per_group=max_per_group, batch_size=batch_size, seed=seed, paraphrases=paraphrases,
        model_options=model_options, cfg=cfg,
    )
    if not api.is_main_process():
        return
    sections = [s for s in ("before", "after", "model") if s in metrics]
    table = Table(title="concept presence per prompt group")
    table.add_column("group")
    for section in sections:
        table.add_column(section)
    for group in metrics[sections[0]]["groups"]:
        cells = []
        for section in sections:
            presence = metrics[section]["groups"][group]["presence"]
            cells.append(", ".join(f"{c} {v:.0%}" for c, v in presence.items()))
        table.add_row(group, *cells)
    console.print(table)
    console.print(f"report: {out / 'report.html'}")


@app.command()
def report(run: Path = typer.Argument(..., help="An evaluation folder holding metrics.json.")) -> None:
    """Rebuild report.html from a saved evaluation."""
    console.print(f"wrote {api.report(run)}")


@app.command()
@with_model_flags
def attack(
    attack_name: str = typer.Option("paraphrase", "--attack", help=f"Attack: {', '.join(api.attack_names())}."),
    model: str = typer.Option("tiny", "--model", help=MODEL_HELP),
    edit: Optional[Path] = typer.Option(None, "--edit", help="Run directory of the erasure to attack."),
    force_edit: bool = force_edit_option(),
    concept: str = typer.Option("circle", "--concept", help="The erased concept to bring back."),
    out: Path = typer.Option(..., "--out", help="Folder for attack.json and images."),
    detector: str = typer.Option("world", "--detector", help=DETECTOR_HELP),
    clip_model: Optional[str] = typer.Option(None, "--clip-model", help="CLIP hub id or folder for --detector clip."),
    budget: list[str] = typer.Option([], "--set", help=ATTACK_SET_HELP),
    model_options: api.ModelOptions = None,
) -> None:
    """Try to bring an erased concept back; reports the attack success rate (ASR) and the prompts found."""
    result = api.attack(
        model, edit=edit, force_edit=force_edit, name=attack_name, concept=concept, out=out, detector=detector, clip_model=clip_model,
        config=parse_assignments(budget) or None, model_options=model_options,
    )
    if not api.is_main_process():
        return
    console.print(f"{attack_name}: ASR {result.asr:.0%} over {len(result.prompts)} prompts → {out}")


analyze_app = typer.Typer(help="Analyses of where concepts live in a model.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("issa")
@with_model_flags
def analyze_issa(
    model: str = typer.Option("tiny", "--model", help=MODEL_HELP),
    edit: Optional[Path] = typer.Option(None, "--edit", help="Run directory of an erasure to analyse instead of the original."),
    force_edit: bool = force_edit_option(),
    concept: str = typer.Option("circle", "--concept", help="World concept whose entry scale to find."),
    out: Path = typer.Option(..., "--out", help="Folder for issa.json, the plot and image strips."),
    seeds: int = typer.Option(8, "--seeds", help="Seeds per prompt pair."),
    pairs: int = typer.Option(6, "--pairs", help="Prompt pairs (evenly spaced over the concept's pairs)."),
    detector: str = typer.Option("world", "--detector", help=DETECTOR_HELP),
    clip_model: Optional[str] = typer.Option(None, "--clip-model", help="CLIP hub id or folder for --detector clip."),
    model_options: api.ModelOptions = None,
) -> None:
    """ISSA: switch the prompt at each scale, both ways, and see where the concept enters and commits (METHODS.md §5)."""
    result = api.issa(
        model, edit=edit, force_edit=force_edit, concept=concept, out=out, seeds=seeds, max_pairs=pairs, detector=detector, clip_model=clip_model,
        model_options=model_options,
    )
    if not api.is_main_process():
        return
    table = Table(title=f"ISSA for '{concept}'")
    for column in ("switch scale k", "P_in(k): c_a before k", "S_k", "P_c(k): c_u before k", "KL(c_u‖c_a)"):
        table.add_column(column, justify="right")
    switch_in, commit, salience, kl = result.switch_in, result.commit, result.saliency, result.kl
    for k in range(len(switch_in)):
        table.add_row(
            str(k), f"{switch_in[k]:.2f}", f"{salience[k]:+.2f}" if k < len(salience) else "", f"{commit[k]:.2f}",
            f"{kl[k]:.3f}" if k < len(kl) else "",
        )
    console.print(table)
    console.print(f"'{concept}' enters at scale {result.entry_scale} (of {len(result.schedule)}) → {out}")
    console.print(result.curves().verdict(), markup=False, highlight=False, soft_wrap=True)


@app.command()
@with_model_flags
def benchmark(
    model: str = typer.Option("tiny", "--model", help="Model (the benchmark's prompt groups are the built-in world's)."),
    concepts: str = typer.Option("circle,red,striped", "--concepts", help="Comma-separated world concepts."),
    methods: str = typer.Option(
        "all", "--methods", help=f"Comma-separated methods ({', '.join(api.METHOD_NAMES)}), variants with settings of their own "
        "(e.g. 'vare[loss=ce]', 'sace[scales=0-2]'), or 'all' (every method and the variants it compares).",
    ),
    out: Path = typer.Option(..., "--out", help="Folder for runs, results.md/json and tradeoff.png."),
    samples: int = typer.Option(9, "--samples", help="Images per prompt (9: ≥ 324 images per rate)."),
    max_per_group: Optional[int] = typer.Option(None, "--max-per-group", help="Prompts per group, evenly spaced (default: all)."),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    model_options: api.ModelOptions = None,
) -> None:
    """Every method on the same concepts: erasure, preservation, FID/KID, time, compute — one table."""
    rows = api.benchmark(
        model, concepts=concepts.split(","), methods=re.findall(r"[^,\[]+(?:\[[^\]]*\])?", methods), out=out, samples_per_prompt=samples,
        max_per_group=max_per_group, preset=preset, model_options=model_options,
    )
    if not api.is_main_process():
        return
    console.print((out / "results.md").read_text(encoding="utf-8") if rows else "no rows")
    console.print(f"results: {out / 'results.md'}, plot: {out / 'tradeoff.png'}")


@app.command("train-tiny")
def train_tiny(
    out: Path = typer.Option(..., "--out", help="Folder for the trained model (load it with --model DIR)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the whole pipeline."),
    transformer_steps: Optional[int] = typer.Option(None, "--transformer-steps", help="Transformer training steps (default: the shipped model's)."),
    quick: bool = typer.Option(False, "--quick", help="A minute-long smoke run with tiny budgets (poor quality)."),
    settings: list[str] = typer.Option(
        [], "--set",
        help="Any training setting as KEY=VALUE, dotted for the networks' and the world's (e.g. --set transformer.width=256 "
        "--set tokenizer_steps=2400 --set detector.learning_rate=1e-3 --set world.two_object_fraction=0.4); repeatable; "
        "wins over --seed and --transformer-steps.",
    ),
    device: str = typer.Option("cpu", "--device", help="torch device to train on, e.g. cpu or cuda (the quality table runs on the CPU)."),
    resume: bool = typer.Option(
        False, "--resume",
        help="Continue an interrupted run in --out from its last saved state (OUT/state/: each finished phase and every 200 "
        "transformer steps), with the same settings and device; gives the same weights as an unbroken run.",
    ),
) -> None:
    """Retrain the built-in tiny model (world, tokenizer, detector, transformer) and print its quality table.

    Deterministic for a seed, settings and device (a GPU gives other weights than the CPU). A run
    stopped part-way continues with the same command and --resume.
    """
    _, quality = api.train_tiny(
        out=out, seed=seed, transformer_steps=transformer_steps, quick=quick, settings=parse_assignments(settings), device=device,
        resume=resume,
    )
    table = Table(title="built-in model quality (held-out prompts)")
    for column in ("measure", "value", "bar", "verdict"):
        table.add_column(column)
    for row in quality.rows():
        table.add_row(*row)
    console.print(table)


INTERRUPTED = "interrupted; an unfinished erase continues with the same command and --resume"


def main() -> None:
    """Entry point: varerase errors become a one-line message (cut at MAX_MESSAGE characters) and exit code 2;
    Ctrl-C says so and exits 130."""
    try:
        app()
    except VarEraseError as error:
        errors.print("[red]error:[/red] ", end="")
        errors.print(clip(str(error)), markup=False, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        errors.print(INTERRUPTED)
        sys.exit(130)
    except SystemExit as exit:
        if exit.code == 130:  # typer turns Ctrl-C inside a command into a silent exit 130
            errors.print(INTERRUPTED)
        raise
