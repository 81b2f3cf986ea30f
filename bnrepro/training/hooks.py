"""What the training loop asks of a data-parallel run, and how such a run plugs in.

The loop (:func:`bnrepro.training.loop.train`) knows nothing of processes or
experiments. Code that spreads a run over processes -- the data-parallel
session of :mod:`bnrepro.distributed.parallel` -- implements the small
:class:`DataParallelHook` protocol and installs it around the run with
:func:`data_parallel`, as :func:`bnrepro.training.loop.observe` installs
callbacks: every ``train()`` inside the block then trains this process's
slice of each global batch through the hook. Outside such a block the loop
is the plain one-process loop.

The dependency points one way: ``distributed/`` imports this module, never
the reverse, so the loop can be read, tested and reused without the
launcher, the store or the experiment registry.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Protocol

import torch
from torch import nn

__all__ = ["DataParallelHook", "data_parallel", "active_hook"]


class DataParallelHook(Protocol):
    """The data-parallel setting of the running process, as the training loop uses it."""

    @property
    def world_size(self) -> int:
        """How many processes share each global batch (1: the plain loop's numbers)."""

    @property
    def per_device_bn(self) -> bool:
        """BN statistics come from this process's rows only, so each needs >= 2 of them."""

    def prepare(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """Convert the model for the run (BN mode, device); returns ``(model, forward_module)``,
        the module the loop calls on a batch (e.g. a ``DistributedDataParallel`` wrapper)."""

    def shard(self, n: int) -> slice:
        """The rows of a global batch of ``n`` that this process trains on."""

    def all_sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """Each value summed over all processes (identity in one process)."""


_ACTIVE: contextvars.ContextVar[DataParallelHook | None] = contextvars.ContextVar(
    "bnrepro_data_parallel", default=None)


def active_hook() -> DataParallelHook | None:
    """The hook installed by the innermost :func:`data_parallel` block, or None."""
    return _ACTIVE.get()


@contextlib.contextmanager
def data_parallel(hook: DataParallelHook) -> Iterator[DataParallelHook]:
    """Make ``hook`` the data-parallel setting of every ``train()`` call inside the block."""
    token = _ACTIVE.set(hook)
    try:
        yield hook
    finally:
        _ACTIVE.reset(token)
