"""The chapter "Is it internal covariate shift?": its runs, tables and scored claims.

The experiments live in :mod:`bnrepro.experiments.ics`, with the claims their
runs are scored by (registered there before the runs); this module loads the
stored results (:func:`load`), turns them into pandas tables, computes one
value per seed for every claim (:func:`seed_values`) and scores them
(:func:`score`), so that the chapter (``book/ics.ipynb``) and the book's
scorecard (through :func:`claims`) compute the same verdicts from the same code.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..core.claims import Claim
from ..experiments.ics import (
    CLAIMS_DECOUPLING,
    CLAIMS_DLN,
    CLAIMS_GHOST,
    CLAIMS_NOISY,
    GHOST_SIZES,
    sweep_decoupling,
    sweep_dln,
    sweep_ghost,
    sweep_noisy_bn,
)
from ..measure.ics import distribution_drift
from ..runner import load_or_run

#: Every claim the chapter scores, in its table's order.
SPECS = (*CLAIMS_NOISY.values(), *CLAIMS_DLN.values(), *CLAIMS_DECOUPLING.values(), *CLAIMS_GHOST.values())

BN, STD, NOISY, STD_NOISE, AFFINE = "BN", "standard", "noisy BN (i.i.d.)", "standard + noise (i.i.d.)", \
    "noisy BN (affine)"
ARM_ORDER = (BN, STD, NOISY, STD_NOISE, AFFINE)


def arm(cfg: dict) -> str:
    """The arm of a noisy_bn (or ics_dln) run, by its norm and noise."""
    base = BN if cfg["norm"] != "none" else STD
    if not cfg.get("noise"):
        return base
    if cfg.get("noise_kind", "iid") == "affine":
        return AFFINE if base == BN else "standard + noise (affine)"
    return NOISY if base == BN else STD_NOISE


#: The chapter's experiments (by name) and the sweep of each.
SWEEPS = {"noisy_bn": sweep_noisy_bn, "ics_dln": sweep_dln, "decoupling": sweep_decoupling,
          "ghost_bn": sweep_ghost}


def load(profile: str, device=None, verbose: bool = True) -> dict:
    """Every result the chapter reads, by experiment name (loaded from the store, or run)."""
    return {name: [load_or_run(c, device=device, verbose=verbose) for c in sweep(profile)]
            for name, sweep in SWEEPS.items()}


# --------------------------------------------------------------------------- tables
def noisy_table(results) -> pd.DataFrame:
    """One row per noisy_bn run: arm, seed, final train/test accuracy, input drift."""
    rows = []
    for r in results:
        h = r["history"]
        rows.append({"arm": arm(r.config), "seed": r.config["seed"],
                     "train_acc": h["epochs"][-1]["train_acc"] if h["epochs"] else math.nan,
                     "test_acc": h["evals"][-1]["test_acc"] if h["evals"] else math.nan,
                     "drift": float(np.mean(distribution_drift(r["probes"]))) if len(r["probes"]) > 1 else math.nan,
                     "diverged": h["diverged"]})
    return pd.DataFrame(rows)


def ics_table(vgg_results, dln_results) -> pd.DataFrame:
    """One row per (run, measurement, layer >= 2): ||G - G'||, cos(G, G'), ||G - G'|| / ||G||."""
    rows = []
    for net, results in (("VGG", vgg_results), ("DLN", dln_results)):
        for r in results:
            for rec in r["ics"]:
                for k in range(1, len(rec["l2"])):  # layer 1 has no ICS by definition
                    rows.append({"net": net, "arm": arm(r.config), "seed": r.config["seed"], "step": rec["step"],
                                 "layer": k + 1, "l2": rec["l2"][k], "cos": rec["cos"][k], "rel": rec["rel"][k],
                                 "step_over_lr_grad": (rec["step_norm"][k] / (r.config["lr"] * rec["grad_norm"][k])
                                                       if "step_norm" in rec and rec["grad_norm"][k] > 0
                                                       else math.nan)})
    return pd.DataFrame(rows)


def landscape_table(results) -> pd.DataFrame:
    """One row per landscape measurement of the noise-free VGG runs."""
    return pd.DataFrame([{"arm": arm(r.config), "seed": r.config["seed"], "step": rec["step"],
                          "loss_min": rec["loss_min"], "loss_max": rec["loss_max"],
                          "loss_range": rec["loss_max"] - rec["loss_min"],
                          "grad_change_min": rec["grad_change_min"], "grad_change_max": rec["grad_change_max"],
                          "beta": rec["beta"], "grad_norm": rec["grad_norm"]}
                         for r in results for rec in r["landscape"]])


def decoupling_tables(results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every suboptimality curve in long form, one row per problem, method and step size at the end)."""
    curves = pd.DataFrame([{"problem": r["problem"], "seed": r.config["seed"], "method": run["method"],
                            "lr": run["lr"], "step": t, "subopt": math.nan if s is None else s}
                           for r in results for run in r["runs"] for t, s in enumerate(run["subopt"])])
    rows = []
    for r in results:
        steps = r.config["steps"]
        for run in r["runs"]:
            s = [math.nan if v is None else v for v in run["subopt"]]
            rows.append({"problem": r["problem"], "seed": r.config["seed"], "method": run["method"], "lr": run["lr"],
                         "first": s[0], "last": s[-1], "rate": run["rate"], "converged": converged(s, steps),
                         "diverged": diverged(s, steps)})
    return curves, pd.DataFrame(rows)


def converged(subopt, steps: int) -> bool:
    """A run converges when it lasts its steps, stays finite and ends 10x below where it started."""
    return len(subopt) == steps + 1 and all(math.isfinite(v) for v in subopt) and subopt[-1] < subopt[0] / 10


def diverged(subopt, steps: int) -> bool:
    """A run diverges when it stops early (non-finite), or ends above where it started."""
    return len(subopt) < steps + 1 or not all(math.isfinite(v) for v in subopt) or subopt[-1] > subopt[0]


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
    """One row per ghost_bn run: ghost batch size, seed, train/test accuracy and loss (eval mode), gap."""
    return pd.DataFrame([{"ghost": r.config["ghost_batch_size"], "seed": r.config["seed"],
                          "train acc": r["train_eval"]["acc"], "test acc": r["test_eval"]["acc"],
                          "train loss": r["train_eval"]["loss"], "test loss": r["test_eval"]["loss"],
                          "gap": r["gap"]} for r in results if r.config["norm"] == "ghost"])


# --------------------------------------------------------------------------- one value per seed, per claim
def _paired(frame: pd.DataFrame, column: str, a: str, b: str, how: str = "diff", key: str = "arm") -> list[float]:
    """Per seed (present in both arms), ``a - b`` or ``a / b`` of ``column``, in seed order."""
    wide = frame.pivot_table(index="seed", columns=key, values=column, aggfunc="mean")
    if a not in wide or b not in wide:
        return []
    both = wide[[a, b]].dropna().sort_index()
    out = both[a] - both[b] if how == "diff" else both[a] / both[b]
    return [float(v) for v in out]


def seed_values(res: dict) -> dict[str, list[float]]:
    """Every claim's values, one per seed (or per random problem), by claim id."""
    noisy = noisy_table(res["noisy_bn"])
    clean = [r for r in res["noisy_bn"] if not r.config["noise"]]
    ics = ics_table(clean, res["ics_dln"])
    per_seed_ics = ics.groupby(["net", "arm", "seed"])[["l2", "cos"]].median().reset_index()
    land = landscape_table(clean).groupby(["arm", "seed"])[["loss_range", "grad_change_max", "beta"]].mean()
    land = land.reset_index()
    eff = effective_lr_table([r for r in clean if r.config["norm"] != "none"])
    eff_last = eff[eff["step"] == eff.groupby("seed")["step"].transform("max")]
    ghost = ghost_table(res["ghost_bn"])
    small, large = min(GHOST_SIZES), max(GHOST_SIZES)
    vgg, dln = per_seed_ics[per_seed_ics["net"] == "VGG"], per_seed_ics[per_seed_ics["net"] == "DLN"]
    _, last = decoupling_tables(res["decoupling"])
    ls = last[last["problem"].str.startswith("least")]
    robust, rate = [], []
    for _, d in ls.groupby("seed"):
        top = {m: d[(d["method"] == m) & d["converged"]]["lr"].max() for m in ("GD on w", "GD on (g, v)")}
        robust.append(math.log10(top["GD on (g, v)"] / top["GD on w"]) if all(v > 0 for v in top.values())
                      else math.nan)
        at = d[(d["method"] == "GD on (g, v)") & (d["lr"] == RATE_LR)]["rate"]
        rate.append(float(at.iloc[0]) if len(at) else math.nan)
    return {
        "noisy-bn-trains-like-bn": _paired(noisy, "train_acc", NOISY, BN),
        "noisy-bn-beats-standard": _paired(noisy, "train_acc", NOISY, STD),
        "noisy-bn-less-stable": _paired(noisy, "drift", NOISY, STD, "ratio"),
        "noise-stops-standard": [float(v) for v in noisy[noisy["arm"] == STD_NOISE].sort_values("seed")["train_acc"]],
        "affine-bn-trains-like-bn": _paired(noisy, "train_acc", AFFINE, BN),
        "affine-bn-less-stable": _paired(noisy, "drift", AFFINE, STD, "ratio"),
        "bn-beats-standard": _paired(noisy, "test_acc", BN, STD),
        "ics-vgg": _paired(vgg, "l2", BN, STD, "ratio"),
        "smoother-loss": _paired(land, "loss_range", BN, STD, "ratio"),
        "predictive-gradient": _paired(land, "grad_change_max", BN, STD, "ratio"),
        "beta-smoothness": _paired(land, "beta", BN, STD, "ratio"),
        "effective-lr-falls": [float(v) for v in eff_last.groupby("seed")["relative effective lr"].median()],
        "ics-dln": _paired(dln, "l2", BN, STD, "ratio"),
        "ics-dln-cos": [float(v) for v in dln[dln["arm"] == BN].sort_values("seed")["cos"]],
        "decoupled-lr-robust": robust,
        "decoupled-linear-rate": rate,
        "scale-invariance-identity": [float(r["scale_invariant"]["identity_gap"]) for r in res["decoupling"]],
        "ghost-bn-regularizes": _paired(ghost, "test acc", small, large, key="ghost"),
        "ghost-bn-lowers-test-loss": _paired(ghost, "test loss", large, small, key="ghost"),
    }


#: The step size at which the decoupled method's linear rate is scored (GD on w diverges there).
RATE_LR = 10.0


def scales(res: dict, profile: str) -> dict[str, str]:
    """The scale of each claim's evidence, in words (by claim id)."""
    def seeds(results):
        return len({r.config["seed"] for r in results})

    nb, gh, dl, dc = res["noisy_bn"][0].config, res["ghost_bn"][0].config, res["ics_dln"][0].config, \
        res["decoupling"][0].config
    vgg = (f"{profile} profile: Fashion-MNIST, small VGG (4 conv + 1 hidden layer), {nb['epochs']} epochs on "
           f"{nb['n_train']:,} images, {seeds(res['noisy_bn'])} seeds")
    dln = (f"{profile} profile: synthetic Gaussian data ({dl['dim']} dims, {dl['num_classes']} classes), "
           f"{dl['depth']}-layer linear network, {dl['epochs']} epochs, {seeds(res['ics_dln'])} seeds")
    ghost = (f"{profile} profile: Fashion-MNIST, small VGG, {gh['epochs']} epochs on {gh['n_train']:,} images, "
             f"{seeds(res['ghost_bn'])} seeds")
    ls = [r for r in res["decoupling"] if r["problem"].startswith("least")]
    dec = (f"{profile} profile: least squares in {dc['dim']} dims, κ = {dc['condition']:,.0f}, {dc['steps']} "
           f"steps, {len(ls)} random problems")
    out = {s.id: vgg for s in CLAIMS_NOISY.values()}
    out.update({s.id: dln for s in CLAIMS_DLN.values()})
    out.update({s.id: dec for s in CLAIMS_DECOUPLING.values()})
    out["scale-invariance-identity"] = f"{dc['steps']} steps in float64, {len(res['decoupling'])} problems"
    out.update({s.id: ghost for s in CLAIMS_GHOST.values()})
    return out


def score(res: dict, profile: str) -> list[Claim]:
    """The chapter's claims (:data:`SPECS`, in order), scored on :func:`seed_values` of ``res``."""
    values, scale = seed_values(res), scales(res, profile)
    return [spec.score(values[spec.id], scale[spec.id]) for spec in SPECS]


def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile`` (for the scorecard)."""
    return score(load(profile, device, verbose=False), profile)
