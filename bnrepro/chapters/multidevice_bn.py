"""The chapter "Batch statistics across devices": its runs, tables and scored claims.

``book/multidevice_bn.ipynb`` reads four kinds of runs: the equivalence check
and the cost of synchronizing (:mod:`bnrepro.experiments.multidevice`), the
ICS chapter's ghost-batch-size sweep (``ghost_bn``,
:mod:`bnrepro.experiments.ics`), and the LeNet chapter's BN runs again,
data-parallel over 2 processes with per-device and with synchronized BN.
This module loads them (:func:`load`), tabulates them and scores them
(:func:`score`); :func:`claims` is the scorecard's entry point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.claims import Claim, at_least, at_most
from ..core.store import Result
from ..distributed.parallel import DataParallel
from ..experiments.ics import sweep_ghost
from ..experiments.lenet import sweep as lenet_sweep
from ..experiments.multidevice import EquivalenceConfig, SyncCostConfig
from ..runner import load_or_run

if TYPE_CHECKING:
    import pandas as pd

# The LeNet chapter's BN runs again, data-parallel: what `bnrepro run lenet --nproc 2 --bn-mode ...` stores.
PARALLEL_SPECS = {"1 process": DataParallel(), "2 processes, sync BN": DataParallel(2, "sync"),
                  "2 processes, per-device BN": DataParallel(2, "local")}


def data_parallel_runs(profile: str, device=None, verbose: bool = True) -> list[tuple[str, Result]]:
    """``(setting, result)`` for the BN arm of the LeNet sweep under each of :data:`PARALLEL_SPECS`."""
    return [(name, load_or_run(cfg, device=device, verbose=verbose, parallel=spec))
            for cfg in lenet_sweep(profile) if cfg.norm == "bn" for name, spec in PARALLEL_SPECS.items()]


def data_parallel_summary(runs) -> "pd.DataFrame":
    """One row per run: setting, seed, epoch-1 train loss, final train/test accuracy, images/s, wall time."""
    import pandas as pd

    return pd.DataFrame([{"setting": name, "seed": r.config["seed"],
                          "epoch-1 train loss": r["history"]["epochs"][0]["train_loss"],
                          "train_acc": r["history"]["epochs"][-1]["train_acc"],
                          "test_acc": r["history"]["epochs"][-1]["test_acc"],
                          "images/s": r["history"]["images_per_s"],
                          "world_size": r.provenance.get("world_size", 1)} for name, r in runs])


def load(profile: str, device=None, verbose: bool = True) -> dict:
    """The chapter's results: equivalence, sync cost, the ICS chapter's ghost-BN sweep and
    the LeNet runs over 2 processes."""
    return {"equivalence": load_or_run(EquivalenceConfig.for_profile(profile), verbose=verbose),
            "cost": load_or_run(SyncCostConfig.for_profile(profile), verbose=verbose),
            "ghost": [load_or_run(c, device=device, verbose=verbose) for c in sweep_ghost(profile)],
            "parallel": data_parallel_runs(profile, device, verbose)}


def ghost_summary(ghost_results) -> "pd.DataFrame":
    """Mean over seeds, per ghost batch size (and no BN), of train/test accuracy and the gap."""
    import pandas as pd

    rows = [{"BN": f"ghost {r.config['ghost_batch_size']}" if r.config["norm"] == "ghost" else "no BN",
             "ghost_batch_size": r.config["ghost_batch_size"] if r.config["norm"] == "ghost" else None,
             "seed": r.config["seed"], "train_acc": r["train_eval"]["acc"], "test_acc": r["test_eval"]["acc"],
             "gap": r["gap"], "loss_gap": r["loss_gap"]} for r in ghost_results]
    return pd.DataFrame(rows)


def score(res: dict, profile: str) -> list[Claim]:
    """The chapter's claims from :func:`load`'s results. Rules fixed before looking at our
    numbers (see the chapter's closing section)."""
    eq, cost = res["equivalence"].data, res["cost"].data
    ghosts = ghost_summary(res["ghost"]).dropna(subset=["ghost_batch_size"])
    by = ghosts.groupby("ghost_batch_size")[["gap", "test_acc"]].mean()
    small, large = by.index.min(), by.index.max()
    scale = f"{profile} profile, 2 gloo processes on {res['cost'].provenance['device']}"
    runs = data_parallel_summary(res["parallel"])
    dp = runs.groupby("setting")[["epoch-1 train loss", "test_acc"]].mean()
    one, sync = "1 process", "2 processes, sync BN"
    first = res["parallel"][0][1].config
    pscale = (f"{profile} profile, Fashion-MNIST {first['n_train'] or 60000} images, batch {first['batch_size']}, "
              f"{first['epochs']} epochs, {runs['seed'].nunique()} seed(s)")
    gscale = f"{profile} profile, Fashion-MNIST {res['ghost'][0].config['n_train']} images, " \
             f"batch {res['ghost'][0].config['batch_size']}, {ghosts['seed'].nunique()} seed(s)"
    return [
        Claim("per-device-bn-is-ghost-bn", "DDP semantics; Hoffer et al. 2017 (ghost BN)",
              "DDP with per-device BN computes ghost BN with one ghost batch per device: max |diff| "
              "of outputs/gradients/running stats (float64)", "0 (exact)",
              max(eq["local_vs_ghost"].values()), at_most(1e-9), scale),
        Claim("sync-bn-is-full-batch-bn", "nn.SyncBatchNorm docs", "synchronized BN over devices = BN on the "
              "global batch, unequal shards: max |diff| (float64)", "0 (exact)",
              max(eq["sync_vs_full"].values()), at_most(1e-9), scale),
        Claim("sync-bn-costs-time", "issue seed: cross-device statistics are 'a huge challenge'",
              "synchronized BN is slower per step than per-device BN (time ratio)", "> 1",
              cost["ratio"], at_least(1.0, 0.02), scale),
        Claim("sync-bn-hides-device-count", "nn.SyncBatchNorm docs; this chapter's equivalence check",
              "d2l's BN-LeNet over 2 processes with synchronized BN trains as in one process: "
              "|relative difference| of the epoch-1 train loss (seed mean)", "0 (float rounding only)",
              abs(dp.loc[sync, "epoch-1 train loss"] / dp.loc[one, "epoch-1 train loss"] - 1),
              at_most(0.01), pscale),
        Claim("sync-bn-same-accuracy", "nn.SyncBatchNorm docs; this chapter's equivalence check",
              "... and reaches the same test accuracy: |difference| of the final test accuracy (seed mean)",
              "0", abs(dp.loc[sync, "test_acc"] - dp.loc[one, "test_acc"]), at_most(0.01), pscale),
        Claim("ghost-bn-regularizes", "De & Smith 2020 (BN 'a surprisingly effective regularizer')",
              f"smaller ghost batches shrink the generalization gap: gap(ghost {int(large)}) - "
              f"gap(ghost {int(small)})", "> 0", float(by.loc[large, "gap"] - by.loc[small, "gap"]),
              at_least(0.02, 0.0), gscale),
    ]



def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile``, from the stored runs (run if missing)."""
    return score(load(profile, device, verbose=False), profile)
