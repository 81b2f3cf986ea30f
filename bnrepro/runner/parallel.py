"""Running an experiment data-parallel: in N local processes, or as the ranks of a ``torchrun`` job.

``bnrepro run lenet --nproc 2 --bn-mode sync`` (or
``load_or_run(cfg, parallel=DataParallel(2, "sync"))``) runs the experiment
in ``nproc`` processes joined by ``torch.distributed`` (gloo on the CPU,
NCCL when every process has its own GPU), each inside the data-parallel
session of :mod:`bnrepro.distributed.parallel`: the experiment's own
``run()`` is unchanged, and every :func:`bnrepro.training.loop.train` call in
it trains this process's slice of each global batch, with BN converted for
the BN mode (see that module for what each rank does).

Rank 0's result is kept; the result's ``parallel`` block and provenance
record the world size, BN mode and backend. Under ``torchrun`` (several
machines), ``bnrepro run`` joins torchrun's processes instead of starting its
own (:func:`run_torchrun`). With ``nproc=1``, ``ghost`` still applies (ghost
BN in one process) and ``sync`` equals ``local``. Experiments that do not
train through the loop (measurements, simulations) refuse a data-parallel
spec (:func:`require_data_parallel`).

This is the runner's part because it reaches the experiment registry and the
store; the processes and the session are :mod:`bnrepro.distributed`'s.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from ..core.config import ConfigError
from ..core.data_parallel import DataParallel
from ..core.device import get_device
from ..core.store import ResultsFolderError, load, path_for, prepare_folder, result_key, save_or_rescue
from ..distributed.launch import launch, torchrun_world
from ..distributed.parallel import plan, session, torchrun_plan
from ..experiments import get_experiment, list_experiments

__all__ = ["run_parallel", "run_torchrun", "require_data_parallel"]


def _rank_main(rank: int, world: int, experiment: str, cfg, spec: DataParallel, devices: list[str],
               backend: str):
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


def run_torchrun(configs, spec: DataParallel, device=None, force: bool = False, root=None, log=print) -> int:
    """Run ``configs`` one after another as this rank of a ``torchrun`` job (several machines too).

    ``torchrun --nnodes 2 --nproc-per-node 4 ... -m bnrepro run lenet --bn-mode sync``: the
    world size comes from torchrun; ranks join with ``env://``, NCCL on GPUs (rank ``r`` on
    ``cuda:LOCAL_RANK``), gloo on CPUs. Rank 0 decides what is already stored and stores
    the results, so only rank 0 needs the results folder. Returns how many runs were made.
    """
    rank, world, local = torchrun_world() or (0, 1, 0)
    if world == 1:
        raise ConfigError("run_torchrun: not started by torchrun with more than one process")
    if spec.nproc not in (1, world):
        raise ConfigError(f"nproc={spec.nproc}: under torchrun the number of processes is torchrun's "
                          f"({world}); leave --nproc out")
    spec = DataParallel(world, spec.bn_mode, spec.ghost_batch_size).canonical()
    dev, backend = torchrun_plan(get_device(device), local, world)
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
    names = ", ".join(e.name for e in list_experiments() if e.data_parallel)
    raise ConfigError(f"experiment {exp.name!r} does not train through bnrepro.training.loop.train (it measures or "
                      f"simulates), so --nproc/--bn-mode do not apply to it; they apply to: {names}")
