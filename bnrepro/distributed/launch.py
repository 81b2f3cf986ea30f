"""Run a function in several local processes joined by ``torch.distributed``.

:func:`launch` is a small, bounded-time replacement for ``torchrun`` on one
machine: it starts ``nproc`` processes (``spawn``), initialises the process
group (gloo on CPU, NCCL when asked) on 127.0.0.1 with a free port and a
timeout, collects every rank's return value, and raises :class:`WorkerError`
as soon as one rank fails or dies, or when the deadline passes -- it never
hangs on a dead peer, and it always ends the processes it started.
:func:`torchrun_world` says whether this process is one of ``torchrun``'s
(several machines).

This module only starts processes: what runs in them is the caller's (the
data-parallel session, :mod:`bnrepro.distributed.parallel`; the runner,
:mod:`bnrepro.runner.parallel`; the equivalence bench,
:mod:`bnrepro.measure.equivalence`).
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

__all__ = ["WorkerError", "free_port", "launch", "torchrun_world"]


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


def torchrun_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when this process is one of several started by
    ``torchrun`` (its ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables), else None."""
    try:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        return None
    return (rank, world, local) if world > 1 else None
