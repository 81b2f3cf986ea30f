"""The chapter "LeNet with BN (d2l)": its runs, tables and scored claims.

``book/lenet.ipynb`` trains d2l's LeNet with and without BN (the ``lenet``
experiment, :mod:`bnrepro.experiments.lenet`) on d2l's own input pipeline
(pixels in [0, 1]), five seeds per arm, plus the plain arm on standardized
inputs, and compares the distribution of final numbers with the runs d2l-zh prints. This module loads those runs
(:func:`load`), tabulates them (:func:`final_epochs`, :func:`summarize`) and
scores them (:func:`score`); :func:`claims` is the scorecard's entry point.
"""

from __future__ import annotations

from ..core.claims import Claim
from ..core.store import Result
from ..experiments.lenet import CLAIMS, sweep
from ..runner import load_or_run

#: Every claim the chapter scores, in its table's order (the lenet experiment also registers the
#: data-parallel checks that the chapter "Batch statistics across devices" scores).
SPECS = tuple(CLAIMS[i] for i in ("bn-lenet-train-acc", "bn-lenet-train-loss", "bn-lenet-test-acc",
                                  "bn-lenet-test-swings", "bn-trains-faster"))

#: How the chapter names the arms (the model's ``norm``, then the input pipeline).
ARMS = {"bn": "with BN", "bnrepro": "with BN", "none": "without BN"}
STANDARDIZED = ", standardized inputs"
#: Epochs whose test accuracies measure a run's late swings (epochs 6-10 of d2l's 10).
SWING_EPOCHS = 5


def arm(config: dict) -> str:
    """The arm of a run: BN or not, and "standardized inputs" where it is not d2l's pipeline."""
    return ARMS[config["norm"]] + (STANDARDIZED if config.get("standardize_inputs", True) else "")


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
        late = [e["test_acc"] for e in h.epochs[-SWING_EPOCHS:]]
        swing = pd.Series(late).std() if len(late) >= 2 else float("nan")
        rows.append({"arm": arm(r.config), "seed": r.config["seed"], **last, "test_acc_swing": swing,
                     "images_per_s": h.images_per_s, "diverged": h.diverged})
    return pd.DataFrame(rows)


def summarize(results: list[Result]):
    """Mean over seeds per arm of the final numbers (min/max of the test accuracy too)."""
    return final_epochs(results).groupby("arm").agg(
        runs=("seed", "count"), train_loss=("train_loss", "mean"), train_acc=("train_acc", "mean"),
        test_acc=("test_acc", "mean"), test_acc_min=("test_acc", "min"),
        test_acc_max=("test_acc", "max"), test_acc_sd=("test_acc", "std"),
        test_acc_swing=("test_acc_swing", "mean"), images_per_s=("images_per_s", "mean"),
        diverged=("diverged", "sum"))


def score(results: list[Result], profile: str) -> list[Claim]:
    """d2l's printed numbers vs ours, one value per seed, by the rules of :data:`SPECS`."""
    runs = final_epochs(results)
    bn = runs[runs["arm"] == "with BN"].sort_values("seed")
    plain = runs[runs["arm"] == "without BN"].sort_values("seed").set_index("seed")
    cfg = results[0].config
    data = "all 60,000" if cfg["n_train"] is None else f"{cfg['n_train']:,}"
    scale = (f"{profile} profile: Fashion-MNIST ({data} training images, pixels in [0, 1]), "
             f"{cfg['epochs']} epochs, one run per seed")
    gain = [a - plain.loc[s, "train_acc"] for s, a in zip(bn["seed"], bn["train_acc"]) if s in plain.index]
    return [CLAIMS["bn-lenet-train-acc"].score(list(bn["train_acc"]), scale),
            CLAIMS["bn-lenet-train-loss"].score(list(bn["train_loss"]), scale),
            CLAIMS["bn-lenet-test-acc"].score(list(bn["test_acc"]), scale),
            CLAIMS["bn-lenet-test-swings"].score(list(bn["test_acc_swing"]), scale
                                                 + f"; std over the last {SWING_EPOCHS} epochs"),
            CLAIMS["bn-trains-faster"].score(gain, scale + "; BN minus plain, paired by seed")]


def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile``, from the stored runs (run if missing)."""
    return score(load(profile, device, verbose=False), profile)
