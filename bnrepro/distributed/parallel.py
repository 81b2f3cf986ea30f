"""Data-parallel training of any experiment: N processes, one BN mode.

``bnrepro run lenet --nproc 2 --bn-mode sync`` (or
``load_or_run(cfg, parallel=DataParallel(2, "sync"))``) runs the experiment
in ``nproc`` processes joined by ``torch.distributed`` (gloo on the CPU,
NCCL when every process has its own GPU). Inside them,
:func:`bnrepro.training.loop.train` -- the one training loop every experiment uses --
sees the active :class:`Session` and

* converts the model's BN layers for the BN mode: ``local`` keeps them
  (per-device statistics, what plain DDP computes), ``sync`` makes them
  :class:`bnrepro.nn.sync_bn.SyncBatchNorm` (statistics of the global batch),
  ``ghost`` makes them :class:`bnrepro.nn.ghost.GhostBatchNorm` of
  ``ghost_batch_size`` within each process;
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

Rank 0's result is stored; the result's ``parallel`` block and provenance
record the world size, BN mode and backend. Under ``torchrun`` (several
machines), ``bnrepro run`` joins torchrun's processes instead of starting its
own (:func:`run_torchrun`). With ``nproc=1``, ``ghost`` still
applies (ghost BN in one process) and ``sync`` equals ``local``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import time
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..core.config import ConfigError, require
from .launch import BN_MODES, apply_bn_mode, launch

__all__ = ["DataParallel", "Session", "active", "session", "run_parallel", "run_torchrun", "torchrun_world",
           "BN_MODES"]


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """How a run is spread: ``nproc`` processes, BN mode, ghost batch size (``ghost`` mode only)."""

    nproc: int = 1
    bn_mode: str = "local"
    ghost_batch_size: int = 32

    def __post_init__(self):
        require(isinstance(self.nproc, int) and not isinstance(self.nproc, bool) and self.nproc >= 1,
                "nproc", self.nproc, "the number of processes must be an int >= 1")
        require(self.bn_mode in BN_MODES, "bn_mode", self.bn_mode, f"must be one of {', '.join(BN_MODES)}")
        require(isinstance(self.ghost_batch_size, int) and self.ghost_batch_size >= 2, "ghost_batch_size",
                self.ghost_batch_size, "BN needs at least 2 samples per ghost batch")

    @property
    def is_default(self) -> bool:
        """One process with the model's own BN: the plain run every chapter stores."""
        return self.nproc == 1 and self.bn_mode in ("local", "sync")

    def tag(self) -> str:
        """Suffix of the result's file name: ``""`` for the plain run, e.g. ``"-np2-sync"``, ``"-np2-ghost16"``."""
        if self.is_default:
            return ""
        mode = f"ghost{self.ghost_batch_size}" if self.bn_mode == "ghost" else self.bn_mode
        return f"-np{self.nproc}-{mode}"

    def canonical(self) -> "DataParallel":
        """The same computation with one spelling: ``sync`` in one process is ``local``, and the
        ghost batch size is kept only in ``ghost`` mode."""
        mode = "local" if (self.nproc == 1 and self.bn_mode == "sync") else self.bn_mode
        ghost = self.ghost_batch_size if mode == "ghost" else DataParallel.ghost_batch_size
        return DataParallel(self.nproc, mode, ghost)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Session:
    """The data-parallel setting of the running process (see :func:`active`)."""

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
            _check_converted(model, mode)
        if not self.distributed:
            return model, model
        from torch.nn.parallel import DistributedDataParallel as DDP

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


def _check_converted(model: nn.Module, mode: str) -> None:
    """Refuse BN layers that ``mode`` could not convert (a model's own ghost or noisy BN): left
    alone they would silently keep their own statistics, so the run would not be what it says."""
    from ..nn.ghost import GhostBatchNorm
    from ..nn.batchnorm import BatchNorm
    from ..nn.sync_bn import SyncBatchNorm

    target = SyncBatchNorm if mode == "sync" else GhostBatchNorm
    odd = sorted({type(m).__name__ for m in model.modules()
                  if isinstance(m, (nn.modules.batchnorm._BatchNorm, BatchNorm)) and type(m) is not target})
    if odd:
        raise ConfigError(f"bn_mode={mode!r}: the model has BN layers of its own kind ({', '.join(odd)}) that "
                          f"this mode cannot convert; run this config with --bn-mode local")


_ACTIVE: contextvars.ContextVar[Session | None] = contextvars.ContextVar("bnrepro_parallel", default=None)


def active() -> Session | None:
    """The :class:`Session` of the running process, or None outside :func:`session`."""
    return _ACTIVE.get()


@contextlib.contextmanager
def session(spec: DataParallel, rank: int = 0, world_size: int = 1, device: str = "cpu",
            backend: str | None = None) -> Iterator[Session]:
    """Make ``spec`` the data-parallel setting of every :func:`bnrepro.training.loop.train` call inside."""
    s = Session(spec, rank, world_size, str(device), backend)
    token = _ACTIVE.set(s)
    try:
        yield s
    finally:
        _ACTIVE.reset(token)


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


def _rank_main(rank: int, world: int, experiment: str, cfg, spec: DataParallel, devices: list[str],
               backend: str):
    from ..experiments import get_experiment

    device = devices[rank]
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    with session(spec, rank, world, device, backend) as s:
        result = get_experiment(experiment).run(cfg, device=device)
    if s.trained == 0:
        raise ConfigError(f"experiment {experiment!r} never called bnrepro.training.loop.train: "
                          "there was nothing to run data-parallel")
    return result if rank == 0 else None


def run_parallel(cfg, spec: DataParallel, device=None, timeout: float | None = None):
    """Run ``cfg``'s experiment under ``spec``; returns its :class:`bnrepro.core.store.Result` (unsaved).

    ``nproc == 1`` runs in this process; more launch processes with
    :func:`bnrepro.distributed.launch.launch` (a rank that fails or dies ends the run with
    :class:`bnrepro.distributed.launch.WorkerError`; no deadline unless ``timeout``).
    """
    from ..core.device import get_device
    from ..experiments import get_experiment

    exp = get_experiment(cfg.experiment)
    spec = spec.canonical()
    require_data_parallel(exp, spec)
    dev = get_device(device)
    start = time.perf_counter()
    if spec.nproc == 1:
        with session(spec, 0, 1, str(dev)):
            result = exp.run(cfg, device=dev)
        backend = None
    else:
        backend, devices = plan(spec, dev)
        result = launch(_rank_main, spec.nproc, (cfg.experiment, cfg, spec, devices, backend),
                        timeout=timeout, backend=backend, init_timeout=120.0)[0]
    if exp.data_parallel:  # the others (measurements, simulations) keep their own provenance
        _stamp(result, spec, backend, time.perf_counter() - start)
    return result


def _stamp(result, spec: DataParallel, backend: str | None, seconds: float, **extra) -> None:
    """Record how a training run was spread: in ``result.parallel`` and its provenance."""
    result.parallel = spec.to_dict()
    result.provenance.update(world_size=spec.nproc, bn_mode=spec.bn_mode, backend=backend,
                             parallel_wall_time_s=round(seconds, 3), **extra)
    if spec.nproc > 1:
        result.provenance["callbacks_saw"] = "rank 0's slice of each global batch"


def torchrun_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when this process is one of several started by
    ``torchrun`` (its ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables), else None."""
    try:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        return None
    return (rank, world, local) if world > 1 else None


def run_torchrun(configs, spec: DataParallel, device=None, force: bool = False, root=None, log=print) -> int:
    """Run ``configs`` one after another as this rank of a ``torchrun`` job (several machines too).

    ``torchrun --nnodes 2 --nproc-per-node 4 ... -m bnrepro run lenet --bn-mode sync``: the
    world size comes from torchrun; ranks join with ``env://``, NCCL on GPUs (rank ``r`` on
    ``cuda:LOCAL_RANK``), gloo on CPUs. Rank 0 decides what is already stored and stores
    the results, so only rank 0 needs the results folder. Returns how many runs were made.
    """
    from ..core.device import get_device
    from ..experiments import get_experiment
    from ..core.store import ResultsFolderError, load, path_for, prepare_folder, result_key, save_or_rescue

    rank, world, local = torchrun_world() or (0, 1, 0)
    if world == 1:
        raise ConfigError("run_torchrun: not started by torchrun with more than one process")
    if spec.nproc not in (1, world):
        raise ConfigError(f"nproc={spec.nproc}: under torchrun the number of processes is torchrun's "
                          f"({world}); leave --nproc out")
    spec = DataParallel(world, spec.bn_mode, spec.ghost_batch_size).canonical()
    dev = get_device(device)
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        dev = torch.device("cuda", local % n)
        torch.cuda.set_device(dev)
        # NCCL refuses two processes on one GPU: processes sharing GPUs talk over gloo (see plan()).
        backend = "nccl" if int(os.environ.get("LOCAL_WORLD_SIZE", world)) <= n else "gloo"
    elif dev.type == "cpu":
        backend = "gloo"
        torch.set_num_threads(1)  # as bnrepro.distributed.launch does: one intra-op thread per process
    else:
        raise ConfigError(f"device {dev}: data parallelism runs on the CPU or CUDA; use --device cpu or cuda")
    for cfg in configs:
        require_data_parallel(get_experiment(cfg.experiment), spec)
    say = log if rank == 0 else (lambda *a, **k: None)
    dist.init_process_group(backend)  # env:// from torchrun
    ran = 0
    try:
        for i, cfg in enumerate(configs, 1):
            key = result_key(cfg, spec)
            stored = [None, None]  # [found stored, why it could not be stored]: rank 0 decides for all
            if rank == 0:
                stored[0] = not force and load(cfg, root, parallel=spec) is not None
                if not stored[0]:
                    try:  # checked before the run, not after it: a refused save would waste it
                        prepare_folder(path_for(cfg, root, spec).parent)
                    except ResultsFolderError as exc:
                        stored[1] = str(exc)
            dist.broadcast_object_list(stored, src=0)  # every rank does what rank 0 found
            if stored[1]:
                raise ResultsFolderError(stored[1])
            if stored[0]:
                say(f"[{i}/{len(configs)}] found stored result, loading: {key}")
                continue
            say(f"[{i}/{len(configs)}] running {key} over {world} torchrun processes ({backend}) ...", flush=True)
            start = time.perf_counter()
            with session(spec, rank, world, str(dev), backend):
                result = get_experiment(cfg.experiment).run(cfg, device=dev)
            if rank == 0:
                _stamp(result, spec, backend, time.perf_counter() - start, launcher="torchrun")
                path = save_or_rescue(result, cfg, root, spec)
                say(f"done in {time.perf_counter() - start:.1f} s; stored as {path.parent.name}/{path.name}")
            ran += 1
            dist.barrier()
    finally:
        dist.destroy_process_group()
    return ran


def require_data_parallel(exp, spec: DataParallel) -> None:
    """Raise :class:`ConfigError` when ``spec`` asks to spread an experiment that does not train."""
    if exp.data_parallel or spec.canonical().is_default:
        return
    from ..experiments import list_experiments

    names = ", ".join(e.name for e in list_experiments() if e.data_parallel)
    raise ConfigError(f"experiment {exp.name!r} does not train through bnrepro.training.loop.train (it measures or "
                      f"simulates), so --nproc/--bn-mode do not apply to it; they apply to: {names}")
