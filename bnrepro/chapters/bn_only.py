"""The chapter "Training only BatchNorm (Frankle et al.)": its runs, tables and scored claims.

``book/bn_only.ipynb`` reads the groups of ``bn_only`` runs of
:func:`bnrepro.experiments.bn_only.sweep_groups` (freezing arms, depth, width,
gamma initialisers, the paper's vs the blog's recipe, a VGG). This module
loads them (:func:`load`), tabulates them (:func:`runs_frame`), reduces them
to the numbers the claims are about (:func:`summarize`) and scores them
(:func:`score`); :func:`claims` is the scorecard's entry point.
"""

from __future__ import annotations

from ..core.claims import Claim, at_least, at_most, between
from ..core.store import Result
from ..experiments.bn_only import sweep_groups
from ..runner import load_or_run


def load(profile: str, device=None, verbose: bool = True) -> dict[str, list[Result]]:
    """The results of every group of :func:`sweep_groups`, from the store (run if missing)."""
    cache: dict[str, Result] = {}
    out = {}
    for name, cfgs in sweep_groups(profile).items():
        for cfg in cfgs:
            if cfg.hash() not in cache:
                cache[cfg.hash()] = load_or_run(cfg, device=device, verbose=verbose)
        out[name] = [cache[cfg.hash()] for cfg in cfgs]
    return out


def runs_frame(results: list[Result]):
    """One row per run: its config fields and what it measured (a pandas DataFrame)."""
    import pandas as pd

    return pd.DataFrame([{**r.config, "test_acc": r.data.test_acc, "train_acc": r.data.train_acc,
                          "trainable_params": r.data.trainable, "bn_params": r.data.bn_params,
                          "recipe": r.data.recipe, "wall_s": r.provenance["wall_time_s"],
                          "diverged": r.data.history.diverged} for r in results])


def log2_slope(df) -> float:
    """Test accuracy gained per doubling of BN parameters (least squares over the runs)."""
    import numpy as np

    return float(np.polyfit(np.log2(df["bn_params"].to_numpy(float)), df["test_acc"].to_numpy(float), 1)[0])


def summarize(groups: dict[str, list[Result]]) -> dict:
    """The numbers the chapter's claims are about (means over seeds)."""
    arms = runs_frame(groups["arms"])
    acc = arms.groupby("trainable")["test_acc"].mean()
    depth = runs_frame(groups["depth"])
    depth_bn = depth[depth["trainable"] == "bn"]
    by_depth = depth_bn.groupby("depth")["test_acc"].mean()
    width_bn = runs_frame(groups["width"])
    analyses = [a for r in groups["arms"] if r.config["trainable"] == "bn"
                for a in r.data.get("gamma_analysis", [])]
    thresholds = sorted({a["threshold"] for a in analyses})

    def mean(key, t):
        values = [a[key] for a in analyses if a["threshold"] == t]
        return sum(values) / len(values) if values else float("nan")

    init = runs_frame(groups["init"]).groupby("bn_init")["test_acc"].mean()
    recipe = runs_frame(groups["recipe"]).groupby(["trainable", "recipe"])["test_acc"].mean()
    return {
        "acc": {k: float(v) for k, v in acc.items()},
        "depths": [int(d) for d in by_depth.index], "depth_gain": float(by_depth.iloc[-1] - by_depth.iloc[0]),
        "slope_depth": log2_slope(depth_bn), "slope_width": log2_slope(width_bn),
        "thresholds": thresholds,
        "frac_small": {t: mean("frac_small", t) for t in thresholds},
        "drop_small": {t: mean("acc", t) - mean("acc_small_off", t) for t in thresholds},
        "drop_random": {t: mean("acc", t) - mean("acc_random_off", t) for t in thresholds},
        "init_acc": {k: float(v) for k, v in init.items()},
        "recipe_acc": {f"{a}/{r}": float(v) for (a, r), v in recipe.items()},
    }


def score(groups: dict[str, list[Result]], profile: str) -> list[Claim]:
    """The paper's and the blog's claims vs ours. The rules (fixed from the statements, before
    the runs) are spelled out in the chapter's "Claims" section."""
    s = summarize(groups)
    base = groups["arms"][0]
    size = base.data.image_size
    n_train = "all" if base.config["n_train"] is None else f"{base.config['n_train']:,}"
    scale = (f"{profile} profile; {base.config['dataset']} {size}x{size}, {n_train} images, "
             f"{base.config['epochs']} epochs; ResNet-{base.config['depth']} unless said; "
             f"{base.provenance['device']}")
    t_lo, t_hi = s["thresholds"][0], s["thresholds"][-1]
    acc, paper = s["acc"], "Frankle, Schwab & Morcos 2020"
    return [
        Claim("bn-beats-random", paper, "BN-only beats training as many random conv weights (accuracy gap)",
              "far higher", acc["bn"] - acc["random"], at_least(0.10, 0.10), scale),
        Claim("bn-beats-output", paper, "BN-only beats training the output layer alone (accuracy gap)",
              "higher", acc["bn"] - acc["output"], at_least(0.05, 0.05), scale),
        Claim("depth-helps", paper, f"BN-only accuracy gain from ResNet-{s['depths'][0]} to "
              f"ResNet-{s['depths'][-1]}", "rises: TF port 46.7% (R14) to 77.8% (R866), CIFAR-10",
              s["depth_gain"], at_least(0.02, 0.02), scale),
        Claim("depth-beats-width", paper, "accuracy per doubling of BN parameters: depth minus width",
              "> 0 (deeper rises faster)", s["slope_depth"] - s["slope_width"], at_least(0.005, 0.015), scale),
        Claim("third-disabled", paper, f"fraction of BN-only channels with |gamma| < {t_lo:g}",
              "a quarter to a third", s["frac_small"][t_lo], between(0.25, 0.35, 0.10), scale),
        Claim("small-gamma-dispensable", "ours, testing the same claim",
              f"accuracy lost when the |gamma| < {t_hi:g} channels are switched off", "~0 (disabled)",
              s["drop_small"][t_hi], at_most(0.01, 0.02), scale),
        Claim("ones-too-symmetric", "blog", "BN-only: he_normal gamma minus all-ones gamma (accuracy)",
              "ones too symmetric to train", s["init_acc"]["he_normal"] - s["init_acc"]["fixed"],
              at_least(0.01, 0.01), scale),
        Claim("blog-recipe-worse", "blog vs paper", "BN-only: paper recipe minus blog recipe (accuracy)",
              "blog 45-52% vs paper ~70-77%", s["recipe_acc"]["bn/paper"] - s["recipe_acc"]["bn/blog"],
              at_least(0.05, 0.05), scale),
    ]


def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile``, from the stored runs (run if missing)."""
    return score(load(profile, device, verbose=False), profile)
