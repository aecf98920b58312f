"""Independent units of work shared over torchrun ranks and gathered back in order.

Evaluation, the attacks and ISSA all do the same thing many times over independent units (a
generation batch, a target prompt to search an attack for, an ISSA pair): :func:`map_sharded`
hands each rank its units (:meth:`DistributedContext.shard`) and gives every rank all the
results, in order. Where a unit is a whole single-process batch, a run over N ranks gives the
single-process result bit for bit.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import torch

from varerase.runtime.distributed import DistributedContext

R = TypeVar("R")


def _portable(value: Any) -> Any:
    """``value`` with every tensor (inside (named) tuples, lists and dicts) copied to the CPU.

    A copy, not just ``.cpu()``: pickling a view sends its whole storage (a batch's worth of
    images per row), and a CUDA tensor would be rebuilt on the sender's GPU.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
        return type(value)(*(_portable(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_portable(v) for v in value)
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    return value


def map_sharded(fn: Callable[[list[int]], Sequence[R]], count: int, context: DistributedContext) -> list[R]:
    """``fn`` over rows ``0..count-1`` split across ranks: every rank gets all ``count`` results, in row order.

    Each rank calls ``fn(indices)`` with its share of the rows (strided); ``fn`` returns one
    picklable result per index (tensors may be nested in (named) tuples, lists and dicts; they come back
    on the CPU from other ranks). Alone: ``fn(list(range(count)))``, results untouched. Every
    rank must call this (it gathers once); ``fn`` must not talk to other ranks, since a rank
    without rows does not call it.
    """
    if not context.is_distributed:
        return list(fn(list(range(count))))
    mine = context.shard(list(range(count)))
    results = _portable(list(fn(mine))) if mine else []
    if len(results) != len(mine):
        raise ValueError(f"map_sharded: fn returned {len(results)} results for {len(mine)} rows")
    ordered: list[Any] = [None] * count
    for indices, share in context.all_gather_objects((mine, results)):
        for i, result in zip(indices, share):
            ordered[i] = result
    return ordered
