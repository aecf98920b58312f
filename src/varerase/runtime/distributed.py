"""Running under ``torchrun``: which process this is and how work is split between processes.

``torchrun --nproc_per_node N -m varerase erase …`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :meth:`DistributedContext.from_environment` joins them into
one process group. A plain ``python`` run is rank 0 of 1, and then no helper here talks to anyone.

* Training is data-parallel: every rank takes its slice of each step's batch
  (:meth:`DistributedContext.split_batch`) and PyTorch's ``DistributedDataParallel``
  (:meth:`DistributedContext.data_parallel`) averages the edit's gradients. Sharding the edit
  itself with FSDP2 is the trainer's business (:mod:`varerase.training.parallel`).
* Work that is not a batch (teacher generations, evaluation prompts) is dealt out with
  :meth:`DistributedContext.shard` and collected with :meth:`DistributedContext.all_gather_objects`
  (:func:`varerase.runtime.sharding.map_sharded` does both for independent units)."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from varerase.errors import ConfigError

T = TypeVar("T")


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the ``world_size`` processes of a run (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "DistributedContext":
        """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``).

        Alone when ``WORLD_SIZE`` is unset or 1. Backend: NCCL when CUDA is available (each process
        then uses GPU ``LOCAL_RANK``), gloo otherwise. Calling it again joins nothing new.
        """
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        if not dist.is_initialized():
            use_cuda = torch.cuda.is_available()
            if use_cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if use_cuda else "gloo")
            atexit.register(_leave_process_group)  # we joined, so we leave (PyTorch warns otherwise)
        return cls.current()

    @classmethod
    def current(cls) -> "DistributedContext":
        """The process group already joined (by :meth:`from_environment` or the caller), or rank 0 of 1."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        rank = dist.get_rank()
        return cls(rank=rank, world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", rank)))

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    # --- splitting work ----------------------------------------------------------------------
    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items, strided (``items[rank::world_size]``): over all ranks, each item exactly once."""
        return list(items[self.rank :: self.world_size])

    def split_batch(self, batch: Sequence[T] | torch.Tensor) -> Sequence[T] | torch.Tensor:
        """This rank's contiguous slice of a global batch; concatenated in rank order they give ``batch``.

        The slices are equal, so the mean of per-rank means is the global mean (what DDP's gradient
        averaging needs); a batch that does not divide evenly is refused.
        """
        if len(batch) % self.world_size:
            raise ConfigError(
                f"a batch of {len(batch)} does not split evenly over {self.world_size} processes; "
                f"choose a batch size that is a multiple of {self.world_size}"
            )
        size = len(batch) // self.world_size
        return batch[self.rank * size : (self.rank + 1) * size]

    # --- talking to the other ranks ----------------------------------------------------------
    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.is_distributed:
            dist.barrier()

    def all_gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order; ``[value]`` when alone."""
        if not self.is_distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Per-key mean of ``values`` over ranks (every rank has the same keys); ``values`` itself when alone."""
        if not self.is_distributed:
            return values
        gathered = self.all_gather_objects(values)
        return {key: sum(v[key] for v in gathered) / len(gathered) for key in values}

    def check_device(self, module: nn.Module) -> None:
        """Refuse a module on a GPU other than this rank's, ``cuda:LOCAL_RANK`` (NCCL needs one GPU per rank)."""
        device = next(module.parameters()).device
        if self.is_distributed and device.type == "cuda" and device.index != self.local_rank:
            raise ConfigError(
                f"rank {self.rank} holds its model on {device}, not cuda:{self.local_rank}; call "
                f"DistributedContext.from_environment() before loading the model (it selects this rank's GPU)"
            )

    # --- PyTorch's parallel wrappers ---------------------------------------------------------
    def data_parallel(self, module: nn.Module) -> nn.Module:
        """``module`` in ``DistributedDataParallel`` (its gradients averaged over ranks in backward); itself when alone.

        Only calls of the returned wrapper's ``forward`` register the hooks that average gradients.
        """
        if not self.is_distributed:
            return module
        device = next(module.parameters()).device
        # Gradients as views of DDP's communication buckets: one gradient-sized buffer less.
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
