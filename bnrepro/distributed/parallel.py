"""The data-parallel session: what one process of a data-parallel run does in the training loop.

A process of a run spread over ``nproc`` processes (started by
:func:`bnrepro.distributed.launch.launch` or by ``torchrun``) enters
:func:`session`; the :class:`Session` is installed as the training loop's
:class:`bnrepro.training.hooks.DataParallelHook`, so that every
:func:`bnrepro.training.loop.train` call inside

* converts the model's BN layers for the BN mode (:func:`bnrepro.nn.modes.apply_bn_mode`):
  ``local`` keeps them (per-device statistics, what plain DDP computes),
  ``sync`` makes them :class:`bnrepro.nn.sync_bn.SyncBatchNorm` (statistics of
  the global batch), ``ghost`` makes them :class:`bnrepro.nn.ghost.GhostBatchNorm`
  of ``ghost_batch_size`` within each process;
* wraps it in ``DistributedDataParallel`` (gradients averaged, rank 0's
  buffers broadcast at every forward);
* gives rank ``r`` the ``r``-th contiguous slice of every global batch:
  ``batch_size`` in a config is the *global* batch, so a run over 2 processes
  takes the same optimizer steps on the same samples as a run in one (with
  per-device BN, a last batch too small to give every process 2 samples is
  dropped);
* weights each rank's loss so that the averaged gradient is that of the global
  mean loss (exact for unequal slices too), and reduces the logged loss and
  accuracy over all ranks.

:func:`plan` and :func:`torchrun_plan` choose the backend and each rank's
device. Running an experiment this way -- the registry, the store -- is the
runner's (:mod:`bnrepro.runner.parallel`); the spec that names a run is
:class:`bnrepro.core.data_parallel.DataParallel`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..core.config import ConfigError
from ..core.data_parallel import DataParallel
from ..nn.modes import apply_bn_mode, check_converted
from ..training.hooks import data_parallel

__all__ = ["Session", "session", "plan", "torchrun_plan"]


@dataclasses.dataclass
class Session:
    """The data-parallel setting of the running process: a :class:`bnrepro.training.hooks.DataParallelHook`."""

    spec: DataParallel
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    backend: str | None = None
    trained: int = 0  # train() calls that used this session

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def prepare(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """Convert BN for the mode; returns ``(model, forward_module)`` (the DDP wrapper when distributed).

        BN layers are replaced in place in their parents, so the caller's model object sees them;
        build optimizers and collect BN modules after this.
        """
        self.trained += 1
        mode = self.spec.bn_mode if self.distributed else self.spec.canonical().bn_mode
        model = apply_bn_mode(model, mode, self.spec.ghost_batch_size)
        if mode != "local":
            check_converted(model, mode)
        if not self.distributed:
            return model, model
        model.to(self.device)
        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        ddp = DDP(model, device_ids=ids)  # broadcasts rank 0's parameters and buffers
        if self.rank > 0:
            # The model is now rank 0's; from here on each rank draws its own random numbers
            # (noise layers, dropout) for its own samples, as one process does for the whole batch.
            # The batches come from their own seeded generator, the same on every rank.
            torch.manual_seed(torch.initial_seed() + self.rank)
        return model, ddp

    @property
    def per_device_bn(self) -> bool:
        """BN statistics from this process's rows only (``local`` or ``ghost`` over several processes)."""
        return self.distributed and self.spec.bn_mode != "sync"

    def shard(self, n: int) -> slice:
        """Rows of a global batch of ``n`` that this rank trains on (contiguous, sizes differ by <= 1)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def all_sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """Sum tensors over all ranks (one all-reduce); identity in one process."""
        if not self.distributed:
            return list(values)
        flat = torch.stack([v.detach().double().reshape(()) for v in values])
        dist.all_reduce(flat)
        return list(flat.unbind())


@contextlib.contextmanager
def session(spec: DataParallel, rank: int = 0, world_size: int = 1, device: str = "cpu",
            backend: str | None = None) -> Iterator[Session]:
    """Make ``spec`` the data-parallel setting of every :func:`bnrepro.training.loop.train` call inside."""
    s = Session(spec, rank, world_size, str(device), backend)
    with data_parallel(s):
        yield s


def plan(spec: DataParallel, device: torch.device) -> tuple[str, list[str]]:
    """Backend and per-rank devices: gloo on the CPU; NCCL when there is a GPU per process,
    else gloo with processes sharing GPUs (round robin) -- correct, but slower than NCCL."""
    if device.type == "cpu":
        return "gloo", ["cpu"] * spec.nproc
    if device.type != "cuda":
        raise ConfigError(f"nproc={spec.nproc} on {device.type}: data parallelism runs on the CPU or CUDA; "
                          "use --device cpu")
    n = torch.cuda.device_count()
    first = device.index or 0
    devices = [f"cuda:{(first + r) % n}" for r in range(spec.nproc)]
    return ("nccl" if spec.nproc <= n - first else "gloo"), devices


def torchrun_plan(device: torch.device, local_rank: int, world: int) -> tuple[torch.device, str]:
    """This ``torchrun`` rank's device and the backend: on CUDA the GPU ``local_rank`` (made
    current) and NCCL, or gloo when processes share GPUs; on the CPU gloo, one intra-op thread."""
    if device.type == "cuda":
        n = torch.cuda.device_count()
        dev = torch.device("cuda", local_rank % n)
        torch.cuda.set_device(dev)
        # NCCL refuses two processes on one GPU: processes sharing GPUs talk over gloo (see plan()).
        return dev, ("nccl" if int(os.environ.get("LOCAL_WORLD_SIZE", world)) <= n else "gloo")
    if device.type == "cpu":
        torch.set_num_threads(1)  # as bnrepro.distributed.launch does: one intra-op thread per process
        return device, "gloo"
    raise ConfigError(f"device {device}: data parallelism runs on the CPU or CUDA; use --device cpu or cuda")
