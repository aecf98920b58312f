"""Attacks and ISSA under torchrun: 2 gloo processes share the work and write what one process writes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp

from test_attacks import SAMPLER as ATTACK_SAMPLER
from test_attacks import SMALL_CONFIGS, _edited, red_channel_detector
from test_distributed import WORLD_SIZE, _become_rank, _free_port, _leave_together, _tiny_text_model
from test_issa import PAIR, _bits_decoder, first_bit_detector
from test_issa import SAMPLER as ISSA_SAMPLER
from varerase.evaluation.attacks import ATTACKS, run_attack
from varerase.evaluation.issa import run_issa
from varerase.runtime.distributed import DistributedContext
from varerase.runtime.sharding import map_sharded

# Three attacked prompts: strided over 2 ranks (0, 2 | 1), a result gathered out of order shows.
# Final images in batches of 2: whole batches are dealt out, so both ranks get some.
ATTACK_CONFIGS = {name: config | {"batch_size": 2} | ({"num_prompts": 3} if "num_prompts" in config else {}) for name, config in SMALL_CONFIGS.items()}
ISSA_PAIRS = [PAIR, ("a blue disc", "a blue star")]
ISSA_SEEDS = [0, 1, 2]


def _mean_bits_decoder(maps):
    """Fake VAE: an 8×8 image coloured by the mean of the first three bits over all tokens of all
    scales, so that prompts attacked with the same seed still get different red-channel scores."""
    bits = torch.cat([m.flatten(1, -2) for m in maps], dim=1).float()  # [B, tokens, d]
    return bits.mean(1)[:, :3, None, None].expand(-1, 3, 8, 8).clone()


def _attacked_model():
    model = _tiny_text_model()
    model.decode = _mean_bits_decoder
    return _edited(model)


def _issa_model():
    model = _tiny_text_model()
    model.decode = _bits_decoder
    return model


def _count_calls(owner, name: str, tally: dict, key: str, rows=lambda *args: 1):
    """Replace ``owner.name`` by a wrapper that adds ``rows(*args)`` to ``tally[key]`` at each call
    (how much of the work this process did); returns ``owner``."""
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        tally[key] = tally.get(key, 0) + rows(*args)
        return original(*args, **kwargs)

    setattr(owner, name, counted)
    return owner


def _scored_images(detector, tally: dict, key: str):
    return _count_calls(detector, "scores", tally, key, rows=len)


def _run_attacks(out: str, counts: dict[str, int]) -> None:
    for name in ATTACKS:
        detector = _scored_images(red_channel_detector(), counts, name)
        run_attack(name, _attacked_model(), "disc", detector, ATTACK_SAMPLER, f"{out}/{name}", ATTACK_CONFIGS[name], progress=False)


def _run_issa(out: str, counts: dict[str, int]) -> None:
    run_issa(_issa_model(), ISSA_PAIRS, _scored_images(first_bit_detector(), counts, "issa"), "disc", ISSA_SAMPLER, ISSA_SEEDS, out, progress=False)


def _worker(rank: int, port: int, out: str, job: str) -> None:
    _become_rank(rank, port)
    from varerase.evaluation.attacks import ring_a_bell, soft_prompt, unlearndiff

    counts: dict = {}
    if job == "attacks":
        # Count the prompts each rank searches for, besides the images it scores.
        searches = counts.setdefault("searches", {})
        _count_calls(ring_a_bell, "genetic_search", searches, "ring-a-bell")
        _count_calls(unlearndiff.HotFlipSearch, "run", searches, "unlearndiff")
        _count_calls(soft_prompt, "optimise_features", searches, "soft-prompt", rows=lambda model, cond, *rest: cond.batch_size)
        _run_attacks(f"{out}/distributed", counts)
    else:
        _run_issa(f"{out}/distributed", counts)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(counts, f)
    _leave_together()


def _spawn(tmp_path, job: str) -> list[dict]:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), job), nprocs=WORLD_SIZE, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


def test_map_sharded_alone_calls_fn_once_on_every_row_in_order():
    calls = []
    results = map_sharded(lambda rows: calls.append(rows) or [r * r for r in rows], 5, DistributedContext())
    assert results == [0, 1, 4, 9, 16] and calls == [[0, 1, 2, 3, 4]]


def test_two_process_attacks_split_the_work_and_write_the_single_process_results(tmp_path):
    reports = _spawn(tmp_path, "attacks")
    single_counts: dict[str, int] = {}
    _run_attacks(str(tmp_path / "single"), single_counts)
    for name in ATTACKS:
        distributed = json.loads((tmp_path / "distributed" / name / "attack.json").read_text())
        single = json.loads((tmp_path / "single" / name / "attack.json").read_text())
        assert distributed["prompts"] == single["prompts"] and distributed["asr"] == single["asr"], name  # verdicts and scores, in order
        if name == "paraphrase":  # 7 images with different scores: one gathered out of order would show
            assert len({row["score"] for row in single["prompts"]}) > 1
        if name == "soft-prompt":  # its ranks optimise other batches than one process: float rounding apart
            for ours, theirs in zip(distributed["settings"].pop("searches"), single["settings"].pop("searches")):
                assert ours["target"] == theirs["target"]
                assert ours["nll_end"] == pytest.approx(theirs["nll_end"], abs=1e-5) and ours["nll_end"] < ours["nll_start"]
        assert distributed["settings"] == single["settings"], name  # search traces included
        assert (tmp_path / "distributed" / name / "attack_images.png").read_bytes() == (tmp_path / "single" / name / "attack_images.png").read_bytes()
        # Every image was scored once, on one rank or the other, and both ranks had work.
        per_rank = [report[name] for report in reports]
        assert sum(per_rank) == single_counts[name] == single["num_prompts"] and min(per_rank) > 0, (name, per_rank)
    # The 3 attacked prompts' searches: 2 on rank 0, 1 on rank 1.
    assert [report["searches"] for report in reports] == [dict.fromkeys(["ring-a-bell", "unlearndiff", "soft-prompt"], n) for n in (2, 1)]


def test_two_process_issa_splits_pair_seed_rows_and_writes_the_single_process_curves(tmp_path):
    reports = _spawn(tmp_path, "issa")
    single_counts: dict[str, int] = {}
    _run_issa(str(tmp_path / "single"), single_counts)
    distributed = json.loads((tmp_path / "distributed" / "issa.json").read_text())
    single = json.loads((tmp_path / "single" / "issa.json").read_text())
    assert distributed["entry_scale"] == single["entry_scale"]
    for ours, theirs in zip(distributed["pairs"], single["pairs"]):
        for key in ("detected_in", "detected_commit", "switch_in", "commit", "switch_in_score", "commit_score"):
            assert ours[key] == theirs[key], key
        assert ours["kl"] == theirs["kl"] and min(ours["kl"]) > 0
    assert distributed["table"] == single["table"]  # both curves, their mean scores, saliency and KL per k
    for strip in ("pair_00.png", "pair_01.png"):
        assert (tmp_path / "distributed" / "strips" / strip).read_bytes() == (tmp_path / "single" / "strips" / strip).read_bytes()
    # 6 (pair, seed) rows × 2S generations (S + 1 switch-in, S − 1 commit: the ends are shared): one pair (3 rows) a rank, each scored once.
    columns = 2 * len(_issa_model().schedule)
    assert single_counts["issa"] == len(ISSA_PAIRS) * len(ISSA_SEEDS) * columns
    assert [report["issa"] for report in reports] == [3 * columns, 3 * columns]
