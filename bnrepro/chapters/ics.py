"""The chapter "Is it internal covariate shift?": its runs, tables and scored claims.

The experiments live in :mod:`bnrepro.experiments.ics`; this module loads
their stored results (:func:`load`), turns them into pandas tables and the
numbers the chapter quotes (:func:`summarize`) and scores those
(:func:`score`), so that the chapter (``book/ics.ipynb``) and the book's
scorecard (through :func:`claims`) compute the same verdicts from the same
code. Every rule was fixed before the runs; the chapter's prose states them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..core.claims import Claim, at_least, at_most, within
from ..experiments.ics import sweep_decoupling, sweep_dln, sweep_ghost, sweep_noisy_bn
from ..measure.ics import distribution_drift
from ..runner import load_or_run

ARM_ORDER = ("BN", "standard", "noisy BN", "standard + noise")
SANTURKAR = "Santurkar et al. 2018"


def arm(cfg: dict) -> str:
    base = "BN" if cfg["norm"] != "none" else "standard"
    if not cfg.get("noise"):
        return base
    return "noisy BN" if base == "BN" else "standard + noise"


def noise_level(cfg: dict) -> float:
    """The noise level s of a noisy_bn run (0 for the arms without noise)."""
    return float(cfg["noise_mean_max"]) if cfg.get("noise") else 0.0


#: The chapter's experiments (by name) and the sweep of each.
SWEEPS = {"noisy_bn": sweep_noisy_bn, "ics_dln": sweep_dln, "decoupling": sweep_decoupling,
          "ghost_bn": sweep_ghost}


def load(profile: str, device=None, verbose: bool = True) -> dict:
    """Every result the chapter reads, by experiment name (loaded from the store, or run)."""
    return {name: [load_or_run(c, device=device, verbose=verbose) for c in sweep(profile)]
            for name, sweep in SWEEPS.items()}


def noisy_table(results) -> pd.DataFrame:
    """One row per noisy_bn run: arm, noise level, seed, final train/test accuracy, input drift."""
    rows = []
    for r in results:
        h = r["history"]
        rows.append({"arm": arm(r.config), "s": noise_level(r.config), "seed": r.config["seed"],
                     "train_acc": h["epochs"][-1]["train_acc"] if h["epochs"] else math.nan,
                     "test_acc": h["evals"][-1]["test_acc"] if h["evals"] else math.nan,
                     "drift": float(np.mean(distribution_drift(r["probes"]))) if len(r["probes"]) > 1 else math.nan,
                     "diverged": h["diverged"]})
    return pd.DataFrame(rows)


def ics_table(vgg_results, dln_results) -> pd.DataFrame:
    """One row per (run, measurement, layer >= 2): ||G - G'||, cos(G, G') and ||G - G'|| / ||G||."""
    rows = []
    for net, results in (("VGG", vgg_results), ("DLN (25 layers)", dln_results)):
        for r in results:
            for rec in r["ics"]:
                for k in range(1, len(rec["l2"])):  # layer 1 has no ICS by definition
                    rows.append({"net": net, "arm": arm(r.config), "seed": r.config["seed"], "step": rec["step"],
                                 "layer": k + 1, "l2": rec["l2"][k], "cos": rec["cos"][k], "rel": rec["rel"][k]})
    return pd.DataFrame(rows)


def landscape_table(results) -> pd.DataFrame:
    """One row per landscape measurement of the noise-free VGG runs."""
    return pd.DataFrame([{"arm": arm(r.config), "seed": r.config["seed"], "step": rec["step"],
                          "loss_min": rec["loss_min"], "loss_max": rec["loss_max"],
                          "loss_range": rec["loss_max"] - rec["loss_min"],
                          "grad_change_min": rec["grad_change_min"], "grad_change_max": rec["grad_change_max"],
                          "beta": rec["beta"]}
                         for r in results for rec in r["landscape"]])


def decoupling_tables(results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every suboptimality curve in long form, the best step size per problem and method)."""
    curves = pd.DataFrame([{"problem": r["problem"], "method": run["method"], "lr": run["lr"], "step": t,
                            "subopt": math.nan if s is None else s}
                           for r in results for run in r["runs"] for t, s in enumerate(run["subopt"])])
    last = curves.sort_values("step").groupby(["problem", "method", "lr"]).tail(1)
    last = last.assign(converged=np.isfinite(last["subopt"]) & (last["subopt"] < 1e3))
    first = curves[curves["step"] == 0].set_index(["problem", "method", "lr"])["subopt"]
    last = last.assign(orders=[math.log10(first[(p, m, lr)] / max(s, 1e-300)) if c else math.nan
                               for p, m, lr, s, c in zip(last["problem"], last["method"], last["lr"],
                                                         last["subopt"], last["converged"])])
    best = (last[last["converged"]].sort_values("subopt").groupby(["problem", "method"]).head(1)
            .set_index(["problem", "method"]))
    return curves, best


def effective_lr_table(results) -> pd.DataFrame:
    """``lr / ||W||^2`` of every weight but the output layer's, relative to the first probe."""
    rows = []
    for r in results:
        first = r["probes"][0]["weight_norms"]
        for p in r["probes"]:
            for k in range(len(p["weight_norms"]) - 1):
                rows.append({"arm": arm(r.config), "seed": r.config["seed"], "step": p["step"], "layer": k + 1,
                             "relative effective lr": (first[k] / p["weight_norms"][k]) ** 2})
    return pd.DataFrame(rows)


def ghost_table(results) -> pd.DataFrame:
    return pd.DataFrame([{"BN statistics over": (str(r.config["ghost_batch_size"]) if r.config["norm"] == "ghost"
                                                else "no BN"),
                          "ghost": r.config["ghost_batch_size"] if r.config["norm"] == "ghost" else math.nan,
                          "seed": r.config["seed"], "train acc": r["train_eval"]["acc"],
                          "test acc": r["test_eval"]["acc"], "gap": r["gap"]} for r in results])


def summarize(res: dict) -> dict:
    """The numbers the chapter's prose and claims use, from :func:`load`'s results."""
    noisy = noisy_table(res["noisy_bn"])
    mean = noisy.groupby(["arm", "s"])[["train_acc", "test_acc", "drift"]].mean()
    clean = [r for r in res["noisy_bn"] if not r.config["noise"]]
    ics = ics_table(clean, res["ics_dln"]).groupby(["net", "arm"])[["l2", "cos", "rel"]].median()
    land = landscape_table(clean).groupby("arm")[["loss_range", "grad_change_max", "beta"]].mean()
    _, best = decoupling_tables(res["decoupling"])
    eff = effective_lr_table(clean)
    eff_last = eff[eff["step"] == eff["step"].max()].groupby("arm")["relative effective lr"].median()
    ghost = ghost_table(res["ghost_bn"]).dropna(subset=["ghost"]).groupby("ghost")["gap"].mean()
    levels = sorted(s for s in mean.index.get_level_values("s").unique() if s > 0)
    out = {
        "levels": levels, "seeds": int(noisy["seed"].nunique()),
        "device": res["noisy_bn"][0].provenance.get("device", "?"),
        "acc": {(a, s): float(v) for (a, s), v in mean["train_acc"].items()},
        "test": {(a, s): float(v) for (a, s), v in mean["test_acc"].items()},
        "drift": {(a, s): float(v) for (a, s), v in mean["drift"].items()},
        "ics_ratio": {net: float(ics.loc[(net, "BN"), "l2"] / ics.loc[(net, "standard"), "l2"])
                      for net in ics.index.get_level_values("net").unique()},
        "ics_rel_ratio": {net: float(ics.loc[(net, "BN"), "rel"] / ics.loc[(net, "standard"), "rel"])
                          for net in ics.index.get_level_values("net").unique()},
        "ics_cos": {(net, a): float(v) for (net, a), v in ics["cos"].items()},
        "land_ratio": {k: float(land.loc["BN", k] / land.loc["standard", k]) for k in land.columns},
        "decoupled_orders": {p: float(best.loc[(p, "GD on (g, v)"), "orders"])
                             for p in best.index.get_level_values("problem").unique()
                             if (p, "GD on (g, v)") in best.index},
        "eff_lr_bn": float(eff_last.get("BN", math.nan)),
        "gap_small": float(ghost.iloc[0]), "gap_large": float(ghost.iloc[-1]),
        "ghost_small": int(ghost.index[0]), "ghost_large": int(ghost.index[-1]),
    }
    return out


def score(summary: dict, profile: str) -> list[Claim]:
    """The chapter's claims; rules fixed before the runs (see the chapter's prose)."""
    acc, drift = summary["acc"], summary["drift"]
    scale = (f"{profile} profile, Fashion-MNIST small VGG, {summary['seeds']} seed(s), {summary['device']}")
    bn, std = acc[("BN", 0.0)], acc[("standard", 0.0)]
    out = []
    for s in summary["levels"]:
        out.append(Claim(f"noisy-bn-trains-like-bn-s{s:g}", SANTURKAR,
                         f"noisy BN (s={s:g}) trains about as well as BN: train-acc difference",
                         "about 0", acc[("noisy BN", s)] - bn, within(0.0, 0.02, 0.05), scale))
    for s in summary["levels"]:
        out.append(Claim(f"noisy-bn-beats-standard-s{s:g}", SANTURKAR,
                         f"noisy BN (s={s:g}) trains better than the standard net: train-acc difference",
                         "> 0", acc[("noisy BN", s)] - std, at_least(0.0, 0.02), scale))
    for s in summary["levels"]:
        out.append(Claim(f"noisy-bn-less-stable-s{s:g}", SANTURKAR,
                         f"noisy BN's (s={s:g}) layer inputs are less stable: drift noisy BN / standard",
                         "> 1", drift[("noisy BN", s)] / drift[("standard", 0.0)], at_least(1.2, 0.2), scale))
    both = sum(drift[("noisy BN", s)] / drift[("standard", 0.0)] >= 1.2 and acc[("noisy BN", s)] - std >= 0
               for s in summary["levels"])
    top = max(summary["levels"])
    dln = "DLN (25 layers)"
    out += [
        Claim("noisy-bn-unstable-yet-trains", SANTURKAR, "at some noise level, noisy BN is both less stable "
              "(drift ratio >= 1.2) and trains at least as well as the standard net: number of such levels",
              ">= 1", float(both), at_least(1.0), scale, "{:.0f}"),
        Claim("noise-stops-standard", SANTURKAR, f"the same noise (s={top:g}) stops the standard net: "
              "its final train accuracy", "fails to train", acc[("standard + noise", top)], at_most(0.2, 0.4),
              scale),
        Claim("bn-beats-standard", SANTURKAR, "BN beats the standard VGG: test-acc difference",
              "~83% vs ~80% (CIFAR-10)", summary["test"][("BN", 0.0)] - summary["test"][("standard", 0.0)],
              at_least(0.0, 0.02), scale),
        Claim("ics-vgg", SANTURKAR, "BN does not reduce ICS (VGG): median ||G-G'|| BN / standard",
              "similar or more", summary["ics_ratio"]["VGG"], at_least(0.8, 0.3), scale),
        Claim("ics-dln", SANTURKAR, "BN does not reduce ICS (25-layer DLN): median ||G-G'|| BN / standard",
              "similar or more", summary["ics_ratio"][dln], at_least(0.8, 0.3), scale),
        Claim("ics-dln-cos", SANTURKAR, "with BN, G and G' nearly uncorrelated (DLN): median cos",
              "about 0", summary["ics_cos"][(dln, "BN")], at_most(0.2, 0.5), scale),
        Claim("smoother-loss", SANTURKAR, "BN narrows the loss range along the gradient: BN / standard",
              "smaller", summary["land_ratio"]["loss_range"], at_most(0.5, 0.5), scale),
        Claim("predictive-gradient", SANTURKAR, "BN makes the gradient more predictive: max change BN / standard",
              "smaller", summary["land_ratio"]["grad_change_max"], at_most(0.5, 0.5), scale),
        Claim("beta-smoothness", SANTURKAR, "BN lowers the effective beta-smoothness: BN / standard",
              "smaller", summary["land_ratio"]["beta"], at_most(0.5, 0.5), scale),
        Claim("decoupled-linear", "Kohler et al. 2018", "GD on (g, v) converges linearly on least squares "
              "(kappa 1e3): orders of magnitude of suboptimality lost", "linear convergence",
              next((v for p, v in summary["decoupled_orders"].items() if p.startswith("least")), math.nan),
              at_least(3.0, 2.0), f"{profile} profile, dimension 20", "{:.1f}"),
        Claim("effective-lr-falls", "Ioffe & Szegedy 2015 (scale invariance)",
              "effective lr of BN-preceded weights falls: end / start (median layer)", "falls",
              summary["eff_lr_bn"], at_most(0.9, 0.1), scale),
        Claim("bn-noise-regularizes", "Ioffe & Szegedy 2015; d2l",
              f"noisier BN statistics shrink the generalisation gap: gap(ghost {summary['ghost_large']}) "
              f"- gap(ghost {summary['ghost_small']})", "regularizer", summary["gap_large"] - summary["gap_small"],
              at_least(0.01, 0.01), scale),
    ]
    return out


def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile`` (for the scorecard)."""
    return score(summarize(load(profile, device, verbose=False)), profile)
