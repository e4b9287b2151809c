"""Data-parallel training across the processes that ``torchrun`` starts, on one machine or several.

``torchrun`` gives each process ``RANK`` (its place among all processes), ``WORLD_SIZE`` (how many) and
``LOCAL_RANK`` (its place on its machine, which picks its GPU). :func:`from_environment` reads them and
:meth:`Processes.join` joins the process group: gloo between CPU processes, NCCL between GPUs.

The global batch stays the configured one whatever the number of processes N: every process draws the same
windows from the same generator and computes the contiguous rows :meth:`Processes.rows` gives it;
DistributedDataParallel averages the gradients over the processes, which is the mean over the whole batch since
the shares are equal. N processes thus compute what one process does on the whole batch, to float rounding.
Whatever must look global is made so here: summed figures (:meth:`Processes.sum`) and per-row tensors such as
carried recurrent states (:meth:`Processes.gather_rows` for a checkpoint, :meth:`Processes.own_rows` on resume).

Without ``torchrun`` (no ``WORLD_SIZE``, or 1) there is one process and every helper returns its input.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils._pytree import tree_map_only

from .config import ConfigError

__all__ = ["Processes", "from_environment", "gradient_sync", "is_main_process"]

T = TypeVar("T")


def _environment() -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` as ``torchrun`` sets them; ``(0, 1, 0)`` in a process of its own."""
    return tuple(
        int(os.environ.get(name, default)) for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))
    )


def is_main_process() -> bool:
    """Whether this process is rank 0 (or alone): the one that writes the run directory and prints."""
    return _environment()[0] == 0


def _device(spec: str, local_rank: int) -> torch.device:
    """``"cpu"``; ``"cuda"``: this machine's GPU number ``local_rank``; ``"auto"``: CUDA where there is one."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"`device` is 'cuda' but process LOCAL_RANK={local_rank} sees {count} CUDA device(s)")
    return torch.device("cuda", local_rank)


def from_environment(device: str, batch_size: int) -> Processes:
    """This process's place among ``torchrun``'s processes and its device, checked before any work: the global
    batch must split into equal shares (a :class:`ConfigError` naming ``batch_size`` and N otherwise)."""
    rank, world_size, local_rank = _environment()
    if batch_size % world_size:
        raise ConfigError(
            f"`batch_size`={batch_size} is the global batch and must split evenly over the {world_size} processes "
            f"(torchrun --nproc_per_node × nodes): give a multiple of {world_size}"
        )
    return Processes(rank, world_size, _device(device, local_rank))


@dataclass(frozen=True)
class Processes:
    """One process's place among ``world_size`` data-parallel processes, and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def join(self) -> None:
        """Join the process group of all ``world_size`` processes (nothing to join for one process). The group
        stays until the process exits, so that a script may call :func:`~rnnzoo.train.train` more than once (a
        default group destroyed and made again among the same processes can hang); a group the caller made
        already is used as it is."""
        if self.world_size == 1 or dist.is_initialized():
            return
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        # torchrun's MASTER_ADDR and MASTER_PORT say where the processes meet (init_method env://)
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", rank=self.rank,
                                world_size=self.world_size)  # fmt: skip
        atexit.register(dist.destroy_process_group)

    def rows(self, batch_size: int) -> slice:
        """This process's contiguous share of the ``batch_size`` rows of a global batch."""
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (which averages the gradients in backward); alone, ``model``."""
        return model if self.world_size == 1 else DistributedDataParallel(model)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each of ``values`` summed over the processes (in float64)."""
        if self.world_size == 1:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def broadcast(self, value: T) -> T:
        """The main process's ``value`` (any picklable object), on every process."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather_rows(self, tree: Any) -> Any:
        """``tree`` (tensors whose first dimension is this process's rows, as carried states are, in any nesting
        of lists and states; None stays None) for the whole global batch, the shares in rank order, on the CPU.
        Every process must call it: it is a collective."""

        def gather(share: Tensor) -> Tensor:
            share = share.contiguous()
            if self.world_size == 1:
                return share.cpu()
            shares = [torch.empty_like(share) for _ in range(self.world_size)]
            dist.all_gather(shares, share)
            return torch.cat(shares).cpu()

        return tree_map_only(Tensor, gather, tree)

    def own_rows(self, tree: Any, batch_size: int) -> Any:
        """The inverse of :meth:`gather_rows`: this process's rows of a global ``tree``, on its device."""
        rows = self.rows(batch_size)
        return tree_map_only(Tensor, lambda t: t[rows].to(self.device), tree)


def gradient_sync(model: nn.Module, sync: bool) -> AbstractContextManager:
    """Wrap a micro-batch's forward and backward: with ``sync`` (the last micro-batch of an optimizer step),
    DistributedDataParallel averages the accumulated gradients in that backward; before it, each process only
    accumulates its own (``no_sync``), so a step costs one all-reduce whatever ``grad_accum``."""
    if sync or not isinstance(model, DistributedDataParallel):
        return nullcontext()
    return model.no_sync()
