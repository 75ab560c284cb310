"""Small runtime helpers shared across the package: text flags from the command line, the process rank, and
the module inside a data-parallel wrapper, and the orderly end of a distributed run."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import nn

__all__ = ["as_flag", "is_rank_zero", "unwrap_module", "finish_distributed"]


def as_flag(value: Any, name: str) -> bool:
    """A boolean setting that may arrive as text: ``monai.bundle run`` reads ``--resume false`` as the string
    ``"false"``, which ``bool`` would call true.

    Raises:
        ValueError: text that is not one of true/false, yes/no, 1/0 (any case).
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "1"):
            return True
        if text in ("false", "no", "0"):
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def is_rank_zero() -> bool:
    """Whether this process is rank 0 (always true outside ``torch.distributed``)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap_module(obj: Any) -> Any:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper; anything else unchanged."""
    if isinstance(obj, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return obj.module
    return obj


def finish_distributed() -> None:
    """End a ``torch.distributed`` run: wait for every rank, then destroy the process group (no-op outside one).

    Without the barrier a rank with less to do (no checkpointing, no logging) may tear down its communication
    threads while a peer still talks to it; with gloo on CPU that aborts the process ("terminate called
    without an active exception") after the work itself succeeded.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
