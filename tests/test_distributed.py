"""Running under torchrun: work splits cover everything once; 2 gloo processes train the edit a single process would."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from conftest import WordHashEncoder, tiny_transformer_config
from varerase.data.pairs import PromptPair
from varerase.errors import ConfigError
from varerase.methods.registry import method_config
from varerase.methods.runner import run_erasure
from varerase.methods.sace import SACE
from varerase.runtime.distributed import DistributedContext

PAIRS = [
    PromptPair("a red circle on a striped background", "a red square on a striped background"),
    PromptPair("a blue circle", "a blue star"),
    PromptPair("a photo of a green circle", "a photo of a green heart"),
]
# A small lr: AdamW divides by √v + 1e-8, so an entry whose gradient is ~1e-8 turns float32
# rounding (summing in another order) into an update difference of up to lr·0.4 per step.
SETTINGS = {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "lr": 1e-4}
WORLD_SIZE = 2


def _tiny_text_model():
    """The ``tiny_text_model`` fixture, built where fixtures do not reach (spawned workers)."""
    from varerase.models.infinity.model import InfinityModel
    from varerase.models.infinity.transformer import InfinityTransformer

    torch.manual_seed(0)
    return InfinityModel(InfinityTransformer(tiny_transformer_config()), vae=None, text_encoder=WordHashEncoder()).eval()


def _become_rank(rank: int, port: int) -> None:
    """What torchrun sets up for a worker: its rank and the address of rank 0 (one thread each: CI has 2 cores)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE))
    torch.set_num_threads(1)


def _leave_together() -> None:
    """Wait for the other rank, then close the group: a rank tearing gloo down while its peer still
    talks aborts the process ("terminate called without an active exception")."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_gives_every_item_to_exactly_one_rank(world_size):
    items = list(range(7))
    shares = [DistributedContext(rank=r, world_size=world_size).shard(items) for r in range(world_size)]
    assert sorted(i for share in shares for i in share) == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_split_batch_slices_concatenate_to_the_batch_and_uneven_batches_are_refused():
    batch = [5, 1, 4, 4, 2, 0]
    for world_size in (1, 2, 3, 6):
        slices = [DistributedContext(rank=r, world_size=world_size).split_batch(batch) for r in range(world_size)]
        assert [i for s in slices for i in s] == batch
    tensor = torch.arange(4.0)
    torch.testing.assert_close(torch.cat([DistributedContext(r, 2).split_batch(tensor) for r in range(2)]), tensor)
    with pytest.raises(ConfigError, match="multiple of 4"):
        DistributedContext(rank=0, world_size=4).split_batch(batch)


def test_single_process_context_touches_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = DistributedContext.from_environment()
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    assert not torch.distributed.is_initialized()
    assert context.all_gather_objects("x") == ["x"] and context.mean({"a": 1.5}) == {"a": 1.5}
    module = torch.nn.Linear(2, 2)
    assert context.data_parallel(module) is module


def _erase_worker(rank: int, port: int, out: str, strategy: str) -> None:
    """One of 2 torchrun-like ranks: a full S-VARE run, and one cut at step 3 then resumed."""
    _become_rank(rank, port)
    from varerase.training.parallel import ParallelConfig

    is_sharded = lambda edit: all(type(p).__name__ == "DTensor" for p in edit.parameters())

    from varerase.methods.svare import SVARE
    from varerase.methods.teacher_cache import TeacherCache

    generated = []
    original_fill = TeacherCache.fill

    def counting_fill(self, *args, **kwargs):
        original_fill(self, *args, **kwargs)
        generated.append(self.generated)

    TeacherCache.fill = counting_fill
    model = _tiny_text_model()
    model.set_activation_checkpointing(strategy == "fsdp")  # the large-model setting: both together
    config = method_config("s-vare", overrides=SETTINGS)
    parallel = ParallelConfig(strategy)
    original_step = SVARE.step
    sharded = []

    def noting_sharding(self, index, update):
        sharded.append(is_sharded(self.edit))
        return original_step(self, index, update)

    SVARE.step = noting_sharding
    result = run_erasure(model, "s-vare", PAIRS, config, run_dir=f"{out}/full", progress=False, parallel=parallel)
    sharded.append(is_sharded(result.model.edit))  # gathered back into a plain edit at the end

    def crash_at_three(self, index, update):
        if index == 3:
            raise KeyboardInterrupt
        return original_step(self, index, update)

    SVARE.step = crash_at_three
    try:
        run_erasure(model, "s-vare", PAIRS, config, run_dir=f"{out}/cut", progress=False, parallel=parallel)
    except KeyboardInterrupt:
        pass
    if rank == 0:  # a copy of the interrupted run for the test to resume in a single process
        shutil.copytree(f"{out}/cut", f"{out}/cut_single")
    DistributedContext.current().barrier()
    SVARE.step = original_step
    run_erasure(model, "s-vare", PAIRS, config, run_dir=f"{out}/cut", resume=True, progress=False, parallel=parallel)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"generated": generated, "sharded": sharded}, f)
    _leave_together()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_svare_equals_single_process_and_resumes(tmp_path, strategy):
    mp.spawn(_erase_worker, args=(_free_port(), str(tmp_path), strategy), nprocs=WORLD_SIZE, join=True)
    single = run_erasure(_tiny_text_model(), "s-vare", PAIRS, method_config("s-vare", overrides=SETTINGS), run_dir=tmp_path / "single", progress=False)
    assert single.metrics["world_size"] == 1

    # Global batch 2 = 1 per rank, gradients averaged by DDP: the same edit as one process.
    full, reference = load_file(tmp_path / "full" / "edit.safetensors"), load_file(tmp_path / "single" / "edit.safetensors")
    assert full.keys() == reference.keys()
    base = dict(_tiny_text_model().named_parameters())
    for name in full:
        torch.testing.assert_close(full[name] - base[name], reference[name] - base[name], atol=1e-5, rtol=0)
    assert max((reference[k] - base[k]).abs().max() for k in full) > 5e-4  # far beyond the tolerance: the edit moved
    # Logged losses are the ranks' means: the single-process log.
    read_log = lambda run: [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in read_log("full")] == [1, 2, 3, 4]  # rank 0 alone writes
    for ours, theirs in zip(read_log("full"), read_log("single")):
        assert ours.keys() == theirs.keys() and all(abs(ours[k] - theirs[k]) < 1e-5 for k in ours)
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["parallel"] == strategy and metrics["forward_tokens"] == single.metrics["forward_tokens"]

    # Interrupted on every rank at step 3, resumed from the step-2 state: the uninterrupted edit.
    cut = load_file(tmp_path / "cut" / "edit.safetensors")
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert [r["step"] for r in read_log("cut")] == [1, 2, 3, 4]
    # The saved state is whole (not per rank): one process resumes it and ends with the single-process edit.
    run_erasure(_tiny_text_model(), "s-vare", PAIRS, method_config("s-vare", overrides=SETTINGS), run_dir=tmp_path / "cut_single", resume=True, progress=False)
    resumed = load_file(tmp_path / "cut_single" / "edit.safetensors")
    assert all(torch.allclose(resumed[k], reference[k], atol=1e-5, rtol=0) for k in reference)

    # The 3 anchors' teacher generations were shared out (2 + 1), each generated once.
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert [report["generated"][0] for report in reports] == [2, 1]
    # FSDP2 holds the edit as shards while training (DDP: whole), a plain edit afterwards.
    assert all(report["sharded"] == [strategy == "fsdp"] * 4 + [False] for report in reports)
    assert len(list((tmp_path / "full" / "teacher_cache").glob("*.safetensors"))) == 3


SACE_SETTINGS = {"steps": 3, "batch_size": 2, "benign_batch_size": 2, "lora_rank": 2, "lr": 1e-3}


def _sharded_sace_worker(rank: int, port: int, out: str) -> None:
    """SACE with LoRA (two forwards before each backward, a scale-gated edit) trained as FSDP2 shards, in float32 and bfloat16."""
    _become_rank(rank, port)
    from varerase.training.parallel import ParallelConfig

    config = method_config("sace", overrides=SACE_SETTINGS)
    shard_sizes = {}
    for name, parallel in {"fp32": ParallelConfig("fsdp"), "bf16": ParallelConfig("fsdp", param_dtype="bfloat16")}.items():
        model = _tiny_text_model()
        original_step = SACE.step

        def noting_shard_size(self, index, update):
            shard_sizes[name] = sum(p.to_local().numel() for p in self.edit.parameters())
            return original_step(self, index, update)

        SACE.step = noting_shard_size
        run_erasure(model, "sace", PAIRS, config, run_dir=f"{out}/{name}", progress=False, parallel=parallel)
        SACE.step = original_step
    with open(f"{out}/shards{rank}.json", "w") as f:
        json.dump(shard_sizes, f)
    _leave_together()


def test_fsdp_sharded_sace_lora_trains_the_single_process_edit_holding_half_of_it_per_rank(tmp_path):
    mp.spawn(_sharded_sace_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    single = run_erasure(_tiny_text_model(), "sace", PAIRS, method_config("sace", overrides=SACE_SETTINGS), run_dir=tmp_path / "single", progress=False)
    whole = sum(p.numel() for p in single.model.edit.parameters())
    # Each rank held its shard of the edit (FSDP2 pads dim 0 to a multiple of the world size).
    shards = [json.loads((tmp_path / f"shards{r}.json").read_text()) for r in range(WORLD_SIZE)]
    for name in ("fp32", "bf16"):
        assert sum(s[name] for s in shards) >= whole and max(s[name] for s in shards) < 0.6 * whole
    reference = load_file(tmp_path / "single" / "edit.safetensors")
    trained = [k for k in reference if "lora_B" in k]  # zero at the start
    assert max(reference[k].abs().max() for k in trained) > 1e-3
    fp32, bf16 = (load_file(tmp_path / name / "edit.safetensors") for name in ("fp32", "bf16"))
    assert fp32.keys() == bf16.keys() == reference.keys()
    assert max((fp32[k] - reference[k]).abs().max() for k in reference) < 1e-5
    # bf16 deltas: AdamW turns rounding of near-zero gradients into whole-lr steps, so compare
    # the trained factors as a whole: the same direction, a few per cent apart.
    flat = lambda edit: torch.cat([edit[k].flatten() for k in trained])
    relative = (flat(bf16) - flat(reference)).norm() / flat(reference).norm()
    assert relative < 0.1


def _evaluate_edited_tiny(out: str) -> dict:
    """The shipped tiny model against a seeded random edit of itself: presence, following, FID/KID, grids."""
    from varerase.edits.delta import EditConfig, ParameterEdit
    from varerase.edits.edited_model import EditedModel
    from varerase.evaluation.detectors.registry import load_world_detector
    from varerase.evaluation.evaluate import evaluate
    from varerase.evaluation.ground_truth import world_ground_truth
    from varerase.evaluation.prompts import world_prompt_groups
    from varerase.models.registry import load_model

    model = load_model("tiny")
    edit = ParameterEdit(model, EditConfig(groups=["ffn"]))
    for delta in edit.deltas.values():
        delta.data = 0.02 * torch.randn(delta.shape, generator=torch.Generator().manual_seed(5))
    edited = EditedModel(model, edit.requires_grad_(False))
    # 3 batches of 4 rows per group: 2 rounds on 2 ranks, the second with one batch only.
    groups = world_prompt_groups(["circle"], 4)
    return evaluate(
        edited, groups, load_world_detector(), model.default_sampler, 3, 4, 0, out, ["circle"], reference_model=model, progress=False,
        ground_truth=world_ground_truth(),
    )


def _evaluate_worker(rank: int, port: int, out: str) -> None:
    _become_rank(rank, port)
    _evaluate_edited_tiny(f"{out}/distributed")
    _leave_together()


def test_distributed_evaluation_gives_the_single_process_metrics_bit_for_bit(tmp_path):
    mp.spawn(_evaluate_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    single = json.loads(json.dumps(_evaluate_edited_tiny(str(tmp_path / "single"))))
    distributed = json.loads((tmp_path / "distributed" / "metrics.json").read_text())
    # Whole batches per rank: the same images, so every number (FID and KID included) is the same.
    assert single["comparison"]["retain"]["distances"]["fid"] > 0 and single["after"]["groups"]["retain"]["distances_to_truth"]["num_real"] == 12
    for settings in (single["settings"], distributed["settings"]):
        settings.pop("date")
    assert distributed == single
    for grid in (tmp_path / "single" / "grids").iterdir():
        assert (tmp_path / "distributed" / "grids" / grid.name).read_bytes() == grid.read_bytes()
