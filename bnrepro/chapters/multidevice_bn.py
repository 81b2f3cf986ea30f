"""The chapter "Batch statistics across devices": its runs, tables and checks.

``book/multidevice_bn.ipynb`` reads three kinds of runs: the equivalence check
and the cost of synchronizing (:mod:`bnrepro.experiments.multidevice`), and
the LeNet chapter's BN arm (d2l's input pipeline, shortened to
:data:`bnrepro.experiments.lenet.PARALLEL_EPOCHS`) trained in one process and
data-parallel over 2 processes with per-device and with synchronized BN. Its
rows are checks of our code, not claims of a paper. The ghost-batch sweep that
the text refers to is scored once, by the ICS chapter.
This module loads the runs (:func:`load`), tabulates them and scores them
(:func:`score`); :func:`claims` is the scorecard's entry point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.claims import Claim
from ..core.store import Result
from ..distributed.parallel import DataParallel
from ..experiments.lenet import CLAIMS as LENET_CLAIMS
from ..experiments.lenet import parallel_sweep
from ..experiments.multidevice import COST_CLAIMS, EQUIVALENCE_CLAIMS, EquivalenceConfig, SyncCostConfig
from ..runner import load_or_run

if TYPE_CHECKING:
    import pandas as pd

#: Every claim (check) the chapter scores, in its table's order.
SPECS = (EQUIVALENCE_CLAIMS["per-device-bn-is-ghost-bn"], EQUIVALENCE_CLAIMS["sync-bn-is-full-batch-bn"],
         COST_CLAIMS["sync-bn-costs-time"], LENET_CLAIMS["sync-bn-hides-device-count"],
         LENET_CLAIMS["sync-bn-same-accuracy"])

# The LeNet chapter's BN runs again, data-parallel: what `bnrepro run lenet --nproc 2 --bn-mode ...` stores.
PARALLEL_SPECS = {"1 process": DataParallel(), "2 processes, sync BN": DataParallel(2, "sync"),
                  "2 processes, per-device BN": DataParallel(2, "local")}


def data_parallel_runs(profile: str, device=None, verbose: bool = True) -> list[tuple[str, Result]]:
    """``(setting, result)`` for each run of :func:`~bnrepro.experiments.lenet.parallel_sweep`
    under each of :data:`PARALLEL_SPECS`."""
    return [(name, load_or_run(cfg, device=device, verbose=verbose, parallel=spec))
            for cfg in parallel_sweep(profile) for name, spec in PARALLEL_SPECS.items()]


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
    """The chapter's results: equivalence, sync cost and the LeNet runs in 1 and over 2 processes."""
    return {"equivalence": load_or_run(EquivalenceConfig.for_profile(profile), verbose=verbose),
            "cost": load_or_run(SyncCostConfig.for_profile(profile), verbose=verbose),
            "parallel": data_parallel_runs(profile, device, verbose)}


def results_list(res: dict) -> list[Result]:
    """Every stored result :func:`load` returned, as one list (for a load summary)."""
    return [res["equivalence"], res["cost"]] + [r for _, r in res["parallel"]]


def score(res: dict, profile: str) -> list[Claim]:
    """The chapter's checks from :func:`load`'s results, by the rules of :data:`SPECS`."""
    eq, cost = res["equivalence"].data, res["cost"].data
    scale = f"{profile} profile, 2 gloo processes on {res['cost'].provenance['device']}"
    runs = data_parallel_summary(res["parallel"])
    per_seed = runs.pivot(index="seed", columns="setting", values=["epoch-1 train loss", "test_acc"])
    one, sync = "1 process", "2 processes, sync BN"
    loss = per_seed["epoch-1 train loss"]
    acc = per_seed["test_acc"]
    first = res["parallel"][0][1].config
    data = "all 60,000" if first["n_train"] is None else f"{first['n_train']:,}"
    pscale = (f"{profile} profile: Fashion-MNIST ({data} training images), batch {first['batch_size']}, "
              f"{first['epochs']} epoch(s), {len(per_seed)} seed(s)")
    values = {"per-device-bn-is-ghost-bn": (max(eq["local_vs_ghost"].values()), scale + ", float64"),
              "sync-bn-is-full-batch-bn": (max(eq["sync_vs_full"].values()), scale + ", float64"),
              "sync-bn-costs-time": (cost["ratio"], scale + ", BN-LeNet, one thread per process"),
              "sync-bn-hides-device-count": (list((loss[sync] / loss[one] - 1).abs()), pscale),
              "sync-bn-same-accuracy": (list((acc[sync] - acc[one]).abs()), pscale)}
    return [spec.score(*values[spec.id]) for spec in SPECS]


def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile``, from the stored runs (run if missing)."""
    return score(load(profile, device, verbose=False), profile)
