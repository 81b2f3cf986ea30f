"""Run a function in several local processes joined by ``torch.distributed``.

:func:`launch` is a small, bounded-time replacement for ``torchrun`` on one
machine: it starts ``nproc`` processes (``spawn``), initialises the process
group (gloo on CPU, NCCL when asked) on 127.0.0.1 with a free port and a
timeout, collects every rank's return value, and raises :class:`WorkerError`
as soon as one rank fails or dies, or when the deadline passes -- it never
hangs on a dead peer, and it always ends the processes it started.

:func:`bn_steps` / :func:`reference_bn_steps` are the two sides of the
equivalence checks of the chapter "Batch statistics across devices" and of
``tests/test_distributed_bn.py``: a few SGD steps of a tiny float64 BN
network under DDP (per-device or synchronized BN) and in one process (ghost
BN or plain full-batch BN).
"""

from __future__ import annotations

import datetime
import io
import math
import os
import queue
import socket
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

__all__ = ["WorkerError", "free_port", "launch", "BN_MODES", "apply_bn_mode", "tiny_bn_net",
           "bn_steps", "reference_bn_steps"]

BN_MODES = ("local", "sync", "ghost")


class WorkerError(RuntimeError):
    """A launched rank raised, died, or the run passed its deadline."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world, port, backend, init_timeout, args, results):
    torch.set_num_threads(1)  # the CPU is shared: one intra-op thread per rank
    # The ranks' stderr (gloo's and Python's warnings) goes to a file that is
    # reported with a failure, not to the caller's stderr (a notebook cell's).
    log = tempfile.TemporaryFile(mode="w+")
    os.dup2(log.fileno(), 2)
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=init_timeout))
        try:
            out = fn(rank, world, *args)
        finally:
            dist.destroy_process_group()
        buf = io.BytesIO()
        torch.save(out, buf)  # plain bytes through the queue: no shared-memory handles to outlive us
        results.put(("ok", rank, buf.getvalue()))
    except BaseException:  # noqa: BLE001 -- report anything, including SystemExit
        log.flush()
        log.seek(0)
        results.put(("error", rank, traceback.format_exc() + log.read()[-4000:]))


def launch(fn, nproc: int = 2, args: tuple = (), *, timeout: float | None = 600.0, backend: str = "gloo",
           init_timeout: float = 120.0) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``nproc`` processes; returns their results by rank.

    ``fn`` must be importable (a module-level function). ``timeout`` bounds the
    whole run in seconds (``None``: no deadline; a dead rank still ends the run);
    ``init_timeout`` is the process group's timeout (how long a collective waits
    for a missing peer). Both are bounds on a hang, not estimates of the run's
    length: a rank that fails or dies ends the run at once, and the defaults
    leave room for a busy machine that starts processes slowly. Raises
    :class:`WorkerError` naming the rank when a rank raises, exits without a
    result, or the deadline passes.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, nproc, port, backend, init_timeout, args, results),
                         daemon=True) for r in range(nproc)]
    got: dict[int, bytes] = {}
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    omp = os.environ.get("OMP_NUM_THREADS")
    try:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the children, not kept by us
        try:
            for p in procs:
                p.start()
        finally:
            if omp is None:
                os.environ.pop("OMP_NUM_THREADS", None)
        dead_since: dict[int, float] = {}
        while len(got) < nproc:
            try:
                status, rank, payload = results.get(timeout=0.2)
                if status == "error":
                    raise WorkerError(f"rank {rank} of {nproc} failed:\n{payload}")
                got[rank] = payload
                continue
            except queue.Empty:
                pass
            now = time.monotonic()
            for r, p in enumerate(procs):
                if r not in got and p.exitcode is not None:
                    # Give its last message a moment to arrive through the queue's pipe.
                    if now - dead_since.setdefault(r, now) > 1.0:
                        raise WorkerError(f"rank {r} of {nproc} died with exit code {p.exitcode} "
                                          "without a result")
            if now > deadline:
                missing = sorted(set(range(nproc)) - set(got))
                raise WorkerError(f"ranks {missing} of {nproc} gave no result within {timeout:.0f} s")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        results.close()
    return [torch.load(io.BytesIO(got[r]), weights_only=False) for r in range(nproc)]


# --------------------------------------------------------------------------- BN modes for data parallelism
def apply_bn_mode(model: nn.Module, mode: str, ghost_batch_size: int = 32) -> nn.Module:
    """``"local"``: leave BN as it is (per-device statistics under DDP); ``"sync"``: synchronized
    BN (:func:`bnrepro.nn.sync_bn.convert_sync_batchnorm`); ``"ghost"``: ghost BN of
    ``ghost_batch_size`` within each device. Returns the (converted) model."""
    from ..nn.ghost import convert_ghost_batchnorm
    from ..nn.sync_bn import convert_sync_batchnorm

    if mode not in BN_MODES:
        raise ValueError(f"BN mode {mode!r} is not one of {', '.join(BN_MODES)}")
    if mode == "sync":
        return convert_sync_batchnorm(model)
    if mode == "ghost":
        return convert_ghost_batchnorm(model, ghost_batch_size)
    return model


def tiny_bn_net(seed: int = 0, dtype=torch.float64) -> nn.Sequential:
    """Conv -> BN2d -> ReLU -> Linear -> BN1d -> ReLU -> Linear on (N, 2, 4, 4) inputs, 3 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).to(dtype)


def _record(model, out, x, steps):
    bns = [m for m in model.modules() if hasattr(m, "running_mean") and m.running_mean is not None]
    steps.append({"out": out.detach().clone(), "x_grad": x.grad.detach().clone(),
                  "grads": [p.grad.detach().clone() for p in model.parameters()],
                  "running": [(m.running_mean.clone(), m.running_var.clone()) for m in bns]})


def bn_steps(rank: int, world: int, x: torch.Tensor, y: torch.Tensor, mode: str, sizes: list[int],
             steps: int = 3, lr: float = 0.1, seed: int = 0) -> list[dict]:
    """SGD on :func:`tiny_bn_net` under DDP; rank ``r`` trains on its slice of ``sizes`` of (x, y).

    The loss of rank ``r`` is ``world * sum(its per-sample losses) / len(x)``, so that DDP's
    average of the parameter gradients is the gradient of the full-batch mean loss even for
    unequal slices. Returns, per step, this rank's output, input gradient (that of the sum of
    all ranks' losses), the DDP-averaged parameter gradients and the running statistics
    (recorded after the step's forward and backward, before the optimizer step).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = apply_bn_mode(tiny_bn_net(seed, x.dtype), mode)
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    start = sum(sizes[:rank])
    xs, ys = x[start:start + sizes[rank]], y[start:start + sizes[rank]]
    records: list[dict] = []
    for _ in range(steps):
        xr = xs.clone().requires_grad_()
        out = ddp(xr)
        loss = nn.functional.cross_entropy(out, ys, reduction="sum") * (world / len(x))
        opt.zero_grad()
        loss.backward()
        _record(model, out, xr, records)
        opt.step()
    return records


def reference_bn_steps(x: torch.Tensor, y: torch.Tensor, mode: str, ghost_batch_size: int | None = None,
                       steps: int = 3, lr: float = 0.1, seed: int = 0) -> list[dict]:
    """The one-process counterpart of :func:`bn_steps` on the full batch with mean loss.

    ``mode="full"``: plain BN over the whole batch (what synchronized BN should equal);
    ``mode="ghost"``: ghost BN of ``ghost_batch_size`` whose running statistics follow the
    first ghost batch (``stats_update="first"``: what DDP keeps from rank 0).
    """
    from ..nn.ghost import convert_ghost_batchnorm

    model = tiny_bn_net(seed, x.dtype)
    if mode == "ghost":
        model = convert_ghost_batchnorm(model, ghost_batch_size, stats_update="first")
    elif mode != "full":
        raise ValueError(f"mode={mode!r}: use 'full' or 'ghost'")
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    records: list[dict] = []
    for _ in range(steps):
        xr = x.clone().requires_grad_()
        out = model(xr)
        loss = nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        _record(model, out, xr, records)
        opt.step()
    return records
