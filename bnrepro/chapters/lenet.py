"""The chapter "LeNet with BN (d2l)": its runs, tables and scored claims.

``book/lenet.ipynb`` trains d2l's LeNet with and without BN (the ``lenet``
experiment, :mod:`bnrepro.experiments.lenet`) over a few seeds and compares
the final numbers with the ones d2l-zh prints. This module loads those runs
(:func:`load`), tabulates them (:func:`final_epochs`, :func:`summarize`) and
scores them (:func:`score`); :func:`claims` is the scorecard's entry point.
"""

from __future__ import annotations

from ..core.claims import Claim, at_least, between, within
from ..core.store import Result
from ..experiments.lenet import sweep
from ..runner import load_or_run

#: How the chapter names the arms (the model's ``norm``).
ARMS = {"bn": "with BN", "bnrepro": "with BN", "none": "without BN"}


def load(profile: str, device=None, verbose: bool = True) -> list[Result]:
    """Every run of the chapter's sweep, from the results store (run if missing)."""
    return [load_or_run(cfg, device=device, verbose=verbose) for cfg in sweep(profile)]


def final_epochs(results: list[Result]):
    """One row per run: its last epoch's numbers, images/s and whether it diverged."""
    import pandas as pd

    rows = []
    for r in results:
        h = r.data.history  # measurements read by attribute: a missing one names the result file
        last = h.epochs[-1] if h.epochs else {}
        rows.append({"arm": ARMS[r.config["norm"]], "seed": r.config["seed"], **last,
                     "images_per_s": h.images_per_s, "diverged": h.diverged})
    return pd.DataFrame(rows)


def summarize(results: list[Result]):
    """Mean over seeds per arm of the final numbers (min/max of the test accuracy too)."""
    return final_epochs(results).groupby("arm").agg(
        runs=("seed", "count"), train_loss=("train_loss", "mean"), train_acc=("train_acc", "mean"),
        test_acc=("test_acc", "mean"), test_acc_min=("test_acc", "min"),
        test_acc_max=("test_acc", "max"), images_per_s=("images_per_s", "mean"),
        diverged=("diverged", "sum"))


def score(results: list[Result], profile: str) -> list[Claim]:
    """d2l's printed numbers vs ours. Rules fixed before the runs: training numbers within
    0.02 (accuracy) / 0.03 (loss) of d2l's; test accuracy inside d2l's printed range."""
    summary = summarize(results)
    bn, plain = summary.loc["with BN"], summary.loc["without BN"]
    scale = (f"{profile} profile, {results[0].config['dataset']}, {int(bn['runs'])} seed(s), "
             f"{results[0].provenance['device']}")
    src = "d2l-zh, batch-norm chapter"
    return [
        Claim("bn-lenet-train-acc", src, "BN-LeNet train accuracy after 10 epochs",
              "0.899-0.902", float(bn["train_acc"]), within(0.90, 0.02, 0.05), scale),
        Claim("bn-lenet-train-loss", src, "BN-LeNet train loss after 10 epochs",
              "0.266-0.273", float(bn["train_loss"]), within(0.27, 0.03, 0.06), scale),
        Claim("bn-lenet-test-acc", src, "BN-LeNet test accuracy after 10 epochs",
              "0.708-0.853", float(bn["test_acc"]), between(0.708, 0.853, 0.03), scale),
        Claim("bn-trains-faster", src, "BN speeds up training: train-accuracy gain over plain "
              "LeNet after the same budget", "> 0", float(bn["train_acc"] - plain["train_acc"]),
              at_least(0.01, 0.01), scale),
    ]


def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile``, from the stored runs (run if missing)."""
    return score(load(profile, device, verbose=False), profile)
