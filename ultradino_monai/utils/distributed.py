"""Rank, world size and model unwrapping that work with or without a ``torch.distributed`` process group.

``torch.distributed.get_rank()`` raises when no process group is initialised (a single-process run,
or a test that destroyed its group), so these return the single-process values (rank 0, world 1)
then. ``ignite.distributed`` would too, but it caches the first context it sees, which goes stale
when a process group is created or destroyed later in the same process.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn

__all__ = ["close_process_group", "get_rank", "get_world_size", "is_distributed", "is_main_process", "unwrap_model"]


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default group; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the default group; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the process that logs and writes files."""
    return get_rank() == 0


def unwrap_model(module: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers.

    Strips them repeatedly, so a compiled DDP model (or a DDP-wrapped compiled one) yields the bare module.
    """
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def close_process_group() -> None:
    """Leave the process group together: a barrier, then ``destroy_process_group``.

    The barrier keeps a fast rank from tearing down its connections while a peer is still in its
    last collective. That is the suspected cause of a rare abort at exit of a finished 2-process
    gloo run ("terminate called without an active exception"), seen once and not reproduced in 11
    reruns.
    """
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
