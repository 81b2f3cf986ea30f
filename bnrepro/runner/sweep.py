"""Run a list of configs (a sweep) through the results store, on an existing executor.

The results store is the sweep's only state: every run writes its own result
atomically when it finishes, and a run whose result is stored is not run
again. So a sweep that is interrupted -- Ctrl-C, a killed process, a lost
node -- is resumed by starting it again: finished runs are loaded, the rest
are run. No home-made scheduler, no state file to go stale. SIGTERM (a
``kill``, a scheduler's stop) is handled like Ctrl-C: no new runs start, the
runs in progress are ended (their results are not stored), and the command
says how to resume. Before the first run starts, the results folder is
checked to be writable (:func:`bnrepro.core.store.prepare_folder`).

Every run uses the same pinned number of CPU threads
(:func:`bnrepro.core.device.run_threads`), whichever executor and however many
``jobs``: so ``--jobs`` does not change a stored number.

Executors:

* ``local`` (default): this process (``jobs=1``) or a pool of ``jobs``
  worker processes (:class:`concurrent.futures.ProcessPoolExecutor`).
* ``submitit``: `submitit <https://github.com/facebookincubator/submitit>`_
  (``pip install 'bnrepro[sweep]'``): SLURM array jobs on a cluster, its local
  executor elsewhere (``cluster="local"`` forces it); ``params`` go to
  ``executor.update_parameters`` (e.g. ``slurm_partition``, ``gpus_per_node``,
  ``timeout_min``). On SLURM every job is submitted at once and the cluster
  schedules them; with the local executor at most ``jobs`` run at a time.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from ..core.config import ConfigError, ExperimentConfig
from ..core.device import run_threads
from ..core.store import load, path_for, prepare_folder, result_key, results_dir
from .run import load_or_run

__all__ = ["EXECUTORS", "SweepReport", "Terminated", "run_sweep", "pending"]

EXECUTORS = ("local", "submitit")


class Terminated(KeyboardInterrupt):
    """SIGTERM during a sweep: stopped the way Ctrl-C stops it (a KeyboardInterrupt, so that every
    handler of Ctrl-C applies)."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Turn SIGTERM into :class:`Terminated` while the sweep runs (main thread only: Python
    delivers signals there); the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass
class SweepReport:
    """What a sweep did: runs found stored, run now, and failed (config hash + tag -> error)."""

    total: int
    stored: int = 0
    ran: int = 0
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    wall_time_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def pending(configs: Sequence[ExperimentConfig], parallel=None, root: Path | None = None) -> list:
    """The configs of ``configs`` without a sound stored result (under ``parallel``)."""
    return [c for c in configs if load(c, root, verbose=True, parallel=parallel) is None]


def _run_one(cfg: ExperimentConfig, parallel, device, force: bool, root) -> str:
    """Worker body (a pool process or a submitit job): run one config into the store
    (on :func:`bnrepro.core.device.run_threads` threads, as every stored run)."""
    if root is not None:  # a submitit job on another node: the store the sweep was started with
        os.environ["BNREPRO_RESULTS"] = str(root)
    load_or_run(cfg, force=force, device=device, parallel=parallel, verbose=False)
    return result_key(cfg, parallel) + f" -> {results_dir()}"


def run_sweep(configs: Sequence[ExperimentConfig], *, executor: str = "local", jobs: int = 1,
              parallel=None, device=None, force: bool = False, root: Path | None = None,
              folder: Path | None = None, cluster: str | None = None,
              params: dict[str, Any] | None = None, log=print) -> SweepReport:
    """Run every config of ``configs`` that has no stored result; returns a :class:`SweepReport`.

    One failing run does not stop the others: its error is in ``report.failed``.
    ``parallel`` (:class:`bnrepro.core.data_parallel.DataParallel`) applies to every run.
    SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) after ending the runs in progress.
    Raises :class:`bnrepro.core.store.ResultsFolderError` before any run if the results cannot be stored.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor={executor!r} is not one of {', '.join(EXECUTORS)}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs={jobs!r}: run at least one job at a time")
    run_threads()  # a bad BNREPRO_THREADS is one clear error, not one failure per run
    with _sigterm_as_interrupt():
        return _sweep(configs, executor, jobs, parallel, device, force, root, folder, cluster, params, log)


def _sweep(configs, executor, jobs, parallel, device, force, root, folder, cluster, params, log) -> SweepReport:
    start = time.perf_counter()
    todo = list(configs) if force else pending(configs, parallel, root)
    report = SweepReport(total=len(configs), stored=len(configs) - len(todo))
    if report.stored:
        log(f"{report.stored} of {report.total} run(s) already stored: loaded, not run again")
    if not todo:
        report.wall_time_s = time.perf_counter() - start
        return report
    for where in sorted({path_for(cfg, root, parallel).parent for cfg in todo}):
        prepare_folder(where)  # a run that could not be stored is not started
    log(f"running {len(todo)} run(s) with executor {executor!r}"
        + (f", {jobs} at a time" if jobs > 1 or executor != "local" else ""))
    if executor == "local" and jobs == 1:
        for i, cfg in enumerate(todo, 1):
            log(f"[{i}/{len(todo)}] ", end="")
            try:
                load_or_run(cfg, force=force, device=device, root=root, parallel=parallel)
                report.ran += 1
            except Exception as exc:  # noqa: BLE001 -- recorded, reported, and the sweep goes on
                report.failed[result_key(cfg, parallel)] = f"{type(exc).__name__}: {exc}"
                log(f"failed: {type(exc).__name__}: {exc}")
    elif executor == "local":
        _pool(todo, report, jobs, parallel, device, force, root, log)
    else:
        store = Path(root) if root is not None else results_dir()
        _submitit(todo, report, jobs, parallel, device, force, store.resolve(),
                  Path(folder) if folder else store / ".submitit", cluster, params or {}, log)
    report.wall_time_s = time.perf_counter() - start
    log(f"sweep: {report.ran} run now, {report.stored} stored before, {len(report.failed)} failed "
        f"({report.wall_time_s:.1f} s)")
    for key, err in report.failed.items():
        log(f"  failed {key}: {err.strip().splitlines()[-1] if err.strip() else err}")
    return report


def _exit_with_parent(parent: int) -> None:
    """Pool-worker initializer: end this worker once its sweep process is gone (killed with
    SIGKILL, which no handler sees), rather than go on running queued runs as an orphan."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)  # a save cut short leaves only a temporary, which the next run removes

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _pool(todo, report, jobs, parallel, device, force, root, log):
    ctx = multiprocessing.get_context("spawn")  # no forked torch state in the workers
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_exit_with_parent,
                                initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_run_one, cfg, parallel, device, force, root): cfg for cfg in todo}
        try:
            for i, fut in enumerate(cf.as_completed(futures), 1):
                key = result_key(futures[fut], parallel)
                try:
                    fut.result()
                    report.ran += 1
                    log(f"[{i}/{len(todo)}] done {key}")
                except Exception as exc:  # noqa: BLE001
                    report.failed[key] = f"{type(exc).__name__}: {exc}"
                    log(f"[{i}/{len(todo)}] failed {key}: {type(exc).__name__}: {exc}")
        except BaseException:  # Ctrl-C or SIGTERM: no more runs, and end the ones in progress (not stored)
            workers = list((getattr(pool, "_processes", None) or {}).values())  # no public handle on them
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in workers:
                proc.terminate()
            for proc in workers:  # gone before we are: no orphan goes on running or holds our stdout
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=10)
            raise


def _submitit(todo, report, jobs, parallel, device, force, store, folder, cluster, params, log):
    try:
        import submitit
    except ImportError:
        raise ConfigError("executor='submitit' needs the submitit package: pip install 'bnrepro[sweep]' "
                          "(or pip install submitit), or use the default local executor") from None
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    local = ex.cluster in ("local", "debug")
    # submitit's local executor stops a job after 2 minutes unless told otherwise.
    ex.update_parameters(**{"timeout_min": 24 * 60, **params})
    log(f"submitit: cluster {ex.cluster!r}, logs in {folder}")
    waiting = list(todo)
    running: dict[Any, ExperimentConfig] = {}
    done = 0
    try:
        while waiting or running:
            # SLURM queues every job; the local executor would start them all at once.
            while waiting and (not local or len(running) < jobs):
                cfg = waiting.pop(0)
                running[ex.submit(_run_one, cfg, parallel, device, force, store)] = cfg
            for job in [j for j in running if j.done()]:
                cfg = running.pop(job)
                done += 1
                key = result_key(cfg, parallel)
                try:
                    job.result()
                    report.ran += 1
                    log(f"[{done}/{len(todo)}] done {key} (job {job.job_id})")
                except Exception as exc:  # noqa: BLE001 -- submitit's FailedJobError carries the job's traceback
                    report.failed[key] = f"{type(exc).__name__}: {exc}"
                    log(f"[{done}/{len(todo)}] failed {key} (job {job.job_id}); log: {job.paths.stderr}")
            time.sleep(0.5)
    except BaseException:
        if local:  # local jobs are our children: end them; SLURM jobs keep running on the cluster
            for job in running:
                job.cancel(check=False)
        raise
