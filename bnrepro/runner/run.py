"""Load a result from the store, or run it and store it: the one way a chapter gets its numbers.

:func:`load_or_run` is why a chapter's notebook is cheap to re-execute: the
store (:mod:`bnrepro.core.store`) keeps finished runs keyed by their config,
and a config whose sound result is stored is loaded, not run again. What is
missing is run -- in this process, or over several
(:mod:`bnrepro.runner.parallel`) -- on the pinned thread count every stored
run uses, and stored atomically before it is returned.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..core.config import ExperimentConfig, config_hash
from ..core.data_parallel import DataParallel
from ..core.device import cpu_threads, run_threads
from ..core.store import Result, load, path_for, prepare_folder, result_key, save_or_rescue
from .parallel import run_parallel

__all__ = ["load_groups", "load_or_run", "load_summary"]


def load_or_run(cfg: ExperimentConfig, *, force: bool = False, device=None,
                root: Path | None = None, verbose: bool = True, parallel=None) -> Result:
    """The stored result of ``cfg`` if there is a sound one, else run it and store it.

    ``parallel`` (a :class:`bnrepro.core.data_parallel.DataParallel`) runs it over several
    processes and/or with another BN mode (:func:`bnrepro.runner.parallel.run_parallel`);
    its result is stored apart.
    Prints which of the two happened, so a reader always knows.
    """
    spec = (parallel or DataParallel()).canonical()
    if not force:
        found = load(cfg, root, verbose=verbose, parallel=spec)
        if found is not None:
            if verbose:
                wall = found.provenance.get("wall_time_s")
                took = f"{wall:.0f} s" if isinstance(wall, (int, float)) else "time unknown"
                print(f"found stored result, loading: {result_key(cfg, spec)} "
                      f"(run on {found.provenance.get('device', '?')}, {took})")
            return found
    target = path_for(cfg, root, spec)
    prepare_folder(target.parent)  # before the run, not after: a refused save would waste it
    if verbose:
        why = "recomputing (force)" if force else "no stored result: running"
        where = "" if spec.is_default else f" over {spec.nproc} process(es), BN mode {spec.bn_mode}"
        print(f"{why} {result_key(cfg, spec)}{where} ...", flush=True)
    start = time.perf_counter()
    with cpu_threads("cpu", run_threads()):  # one pinned count for every stored run: see run_threads
        result = run_parallel(cfg, spec, device=device)
    result.config_hash = config_hash(cfg)
    path = save_or_rescue(result, cfg, root, spec)
    if verbose:
        print(f"done in {time.perf_counter() - start:.1f} s; stored as {path.parent.name}/{path.name}")
    return result


def load_groups(groups: dict, *, device=None, verbose: bool = True) -> dict[str, list[Result]]:
    """:func:`load_or_run` for named groups of configs (a chapter's studies), each config once even
    where groups share it: ``{name: [cfg, ...]} -> {name: [Result, ...]}``."""
    cache: dict[str, Result] = {}
    out = {}
    for name, cfgs in groups.items():
        for cfg in cfgs:
            if cfg.hash() not in cache:
                cache[cfg.hash()] = load_or_run(cfg, device=device, verbose=verbose)
        out[name] = [cache[cfg.hash()] for cfg in cfgs]
    return out


def load_summary(results) -> str:
    """One line for a chapter: how many runs were loaded and computed, and their stored compute time.

    ``results``: the chapter's results (a list, or a dict of lists whose runs may repeat).
    """
    if isinstance(results, dict):
        results = [r for group in results.values() for r in (group if isinstance(group, list) else [group])]
    unique = {id(r): r for r in results}.values()
    loaded = sum(1 for r in unique if r.loaded)
    wall = sum(float(r.provenance.get("wall_time_s") or 0.0) for r in unique)
    return (f"{len(unique)} runs: {loaded} loaded, {len(unique) - loaded} computed now; "
            f"stored compute time {wall / 60:.1f} min")
