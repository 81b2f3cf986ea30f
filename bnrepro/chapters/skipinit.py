"""The chapter "SkipInit (De & Smith)": its runs, tables and scored claims.

``book/skipinit.ipynb`` and the scorecard page score the same runs with
:func:`score` (the scorecard through :func:`claims`), so the two can never
disagree. The claims read the exact path-depth distribution
(:mod:`bnrepro.measure.path_depth`: the one claim computed here, not from a
stored run) and the stored runs of ``skipinit_paths`` (the Monte Carlo, a check
of our code), ``skipinit_variance`` (Figure 4), ``skipinit_depth`` (Tables 1/2),
``skipinit_batch`` (Figures 5/6) and ``skipinit_variants`` (alpha = 1/sqrt(d) at
depth and regularized SkipInit, scored against the stored runs of the depth and
batch sweeps). Every rule was fixed from the paper's statements before the runs;
the experiment modules register them.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.claims import EXACT, Claim, ClaimSpec, within
from ..core.store import Result
from ..data.datasets import DATASET_SIZES
from ..experiments.skipinit import PATHS_CLAIMS, VARIANCE_CLAIMS, SkipInitPathsConfig, sweep_variance
from ..experiments.skipinit_train import BATCH_CLAIMS, DEPTH_CLAIMS, sweep_batch, sweep_depth
from ..experiments.skipinit_variants import REG, SQRT_D, VARIANT_CLAIMS
from ..experiments.skipinit_variants import sweep as sweep_variants
from ..measure.path_depth import share_within
from ..models.resnet import VARIANTS
from ..runner import load_or_run

#: Test accuracy of a 10-class guess; a diverged run counts as this.
CHANCE = 0.1
#: Below this test accuracy a run that did not diverge "did not train".
TRAINS_ABOVE = 0.15
#: The paper's headline: 10,000 residual blocks, paths through at most 15 branches.
HEADLINE_BLOCKS, HEADLINE_BRANCHES = 10_000, 15
#: Runs shorter than this many epochs cannot score "comparable to BN" (they measure the first steps).
COMPARE_EPOCHS = 10
#: How the chapter names the two arms of the batch-size sweep.
BATCH_ARMS = {"bn": "BN", "skipinit": "SkipInit", REG: "regularized SkipInit"}

#: The 97% is computed exactly here, with the convention of the paper's wording: the variance
#: entering block i is i (the stem hands a unit variance to block 1, so s = 1 below).
PATHS_97 = ClaimSpec(
    "paths-97pct", EXACT, "share of the output variance from paths through at most 15 residual branches, "
    "10,000 normalized blocks, the variance entering block i being i", "97%", within(0.97, 0.005),
    "the paper prints 97%: a whole percent, so ±0.5 points", source="de2020batch", where="Fig. 3",
    fmt="{:.4f}")

#: Every claim the chapter scores, in its table's order.
SPECS = (PATHS_97, *PATHS_CLAIMS.values(), *VARIANCE_CLAIMS.values(), *DEPTH_CLAIMS.values(),
         *BATCH_CLAIMS.values(), *VARIANT_CLAIMS.values())


def load(profile: str, device=None, verbose: bool = True) -> dict[str, list[Result]]:
    """The runs the claims read, from the results store (run if missing), in sweep order:
    ``{"paths": [...], "variance": [...], "depth": [...], "batch": [...], "variants": [...]}``."""
    def get(cfgs):
        return [load_or_run(cfg, device=device, verbose=verbose) for cfg in cfgs]

    return {"paths": get([SkipInitPathsConfig.for_profile(profile)]), "variance": get(sweep_variance(profile)),
            "depth": get(sweep_depth(profile)), "batch": get(sweep_batch(profile)),
            "variants": get(sweep_variants(profile))}


# ------------------------------------------------------------------ the Monte Carlo (a check)
def mc_deviation(paths: Result, modes=("scaled", "none")) -> float:
    """Largest |Monte Carlo - exact| in jackknife standard errors over ``modes`` and depths."""
    worst = 0.0
    for mode in modes:
        v = paths.data[mode]
        mean, sem, exact = (np.asarray(v[k], dtype=float) for k in ("mean", "sem", "exact"))
        worst = max(worst, float((np.abs(mean - exact) / np.maximum(sem, 1e-12)).max()))
    return worst


# ------------------------------------------------------------------ Figure 4
def fig4_linear(linear: Result) -> dict[str, float]:
    """Figure 4(a) numbers of one deep linear ResNet: the skip variance's slope per block
    (least squares), the mean branch variance, and the largest relative gap between
    BN's moving variance and the skip variance."""
    skip = np.asarray(linear["skip"], dtype=float)
    blocks = np.arange(1, linear["num_blocks"] + 1)
    return {"slope": float(np.polyfit(blocks, skip, 1)[0]),
            "branch_mean": float(np.mean(linear["branch"])),
            "bn_track": float(np.max(np.abs(np.asarray(linear["bn_running_var"], dtype=float) / skip - 1)))}


def fig4_stages(conv: Result, stages: int = 3) -> list[dict[str, float]]:
    """Figure 4(b) per stage of one ReLU conv ResNet: the skip variance's slope per block, the
    mean variance of the branches that feed it (every block of the stage but the last) and
    their ratio, which is 1 when the variances of skip path and branch add."""
    skip, branch = (np.asarray(conv[k], dtype=float) for k in ("skip", "branch"))
    n = len(skip) // stages
    out = []
    for k in range(stages):
        s, b = skip[k * n:(k + 1) * n], branch[k * n:(k + 1) * n - 1]
        slope = float(np.polyfit(np.arange(n), s, 1)[0]) if n >= 2 else math.nan
        mean_b = float(b.mean()) if len(b) else math.nan
        out.append({"stage": k + 1, "slope": slope, "branch_mean": mean_b, "ratio": slope / mean_b})
    return out


def variance_frame(results: list[Result]):
    """One row per Figure 4 measurement and quantity: kind, seed, stage (0 for the linear net),
    slope, branch mean and, for (b), their ratio."""
    import pandas as pd

    rows = []
    for r in results:
        kind, seed = r.config["kind"], r.config["seed"]
        if kind == "linear":
            f = fig4_linear(r)
            rows.append({"kind": kind, "seed": seed, "stage": 0, "slope": f["slope"],
                         "branch_mean": f["branch_mean"], "ratio": f["slope"] / f["branch_mean"],
                         "bn_track": f["bn_track"]})
        else:
            rows += [{"kind": kind, "seed": seed, **st} for st in fig4_stages(r)]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ depth sweep
def depth_frame(results: list[Result]):
    """One row per depth-sweep run (pandas DataFrame), with its outcome:
    "diverged", "did not train" (accuracy below 0.15) or "trains"."""
    import pandas as pd

    rows = []
    for r in results:
        c = r.config
        n_train = c.get("n_train") or DATASET_SIZES[c["dataset"]][0]
        rows.append({"variant": c["variant"], "depth": c["depth"], "seed": c["seed"], "blocks": r["num_blocks"],
                     "test_acc": r["test_acc"], "diverged": r["diverged"],
                     "diverged_at_step": r["diverged_at_step"], "steps": r["planned_steps"],
                     "epochs": r["planned_steps"] * c["batch_size"] / n_train,
                     "final_train_loss": r["final_train_loss"], "mean |alpha| at end": r["alpha_abs_mean"],
                     "time_s": r.provenance["wall_time_s"]})
    df = pd.DataFrame(rows)
    df["acc_or_chance"] = np.where(df["diverged"], CHANCE, df["test_acc"].astype(float))
    df["outcome"] = np.where(df["diverged"], "diverged",
                             np.where(df["test_acc"].astype(float).fillna(0) < TRAINS_ABOVE, "did not train",
                                      "trains"))
    return df


def deepest_values(df) -> dict:
    """At the deepest depth: ``dmax``, accuracy-or-chance per variant (a list in seed order), and
    the paired differences SkipInit - BN when the runs trained for :data:`COMPARE_EPOCHS` epochs
    (else empty: the comparison is not scored at that budget)."""
    dmax = int(df["depth"].max())
    at = df[df["depth"] == dmax].sort_values("seed")
    acc = {v: list(g["acc_or_chance"]) for v, g in at.groupby("variant", sort=False)}
    long_enough = bool((at["epochs"] >= COMPARE_EPOCHS).all())
    paired = []
    if long_enough and {"bn", "skipinit"} <= set(acc):
        bn = at[at["variant"] == "bn"].set_index("seed")["acc_or_chance"]
        skip = at[at["variant"] == "skipinit"].set_index("seed")["acc_or_chance"]
        paired = [float(skip[s] - bn[s]) for s in skip.index if s in bn.index]
    return {"dmax": dmax, "acc": acc, "paired": paired, "long_enough": long_enough,
            "epochs": float(at["epochs"].max())}


# ------------------------------------------------------------------ batch-size sweep
def batch_frame(results: list[Result]):
    """One row per batch-sweep run (pandas DataFrame); a diverged run scores -1 when ranking lrs."""
    import pandas as pd

    df = pd.DataFrame([{"arm": BATCH_ARMS[r.config["variant"]], "batch": r.config["batch_size"],
                        "lr": r.config["lr"], "seed": r.config["seed"], "steps": r["planned_steps"],
                        "epochs": r.config["epochs"], "test_acc": r["test_acc"], "diverged": r["diverged"]}
                       for r in results])
    df["score"] = df["test_acc"].astype(float).fillna(-1.0)
    return df


def best_lrs(batch_df):
    """Per (arm, batch, seed): the best lr of the grid and its test accuracy (``best``), and per
    (arm, batch): the lr whose mean accuracy over seeds is best and whether it lies on the
    grid's edge (``optimum``)."""
    best = (batch_df.sort_values(["score", "lr"]).groupby(["arm", "batch", "seed"]).tail(1)
            .sort_values(["arm", "batch", "seed"]).reset_index(drop=True))
    mean = batch_df.groupby(["arm", "batch", "lr"], as_index=False)["score"].mean()
    opt = mean.sort_values(["score", "lr"]).groupby(["arm", "batch"]).tail(1).sort_values(["arm", "batch"])
    grid = batch_df.groupby("batch")["lr"].agg(["min", "max"])
    opt = opt.assign(at_edge=[lr in (grid.loc[b, "min"], grid.loc[b, "max"]) for b, lr in zip(opt["batch"], opt["lr"])])
    return best, opt.rename(columns={"score": "mean_acc"}).reset_index(drop=True)


def batch_values(batch_df) -> dict:
    """The per-seed values of the batch claims, and the (arm, batch) whose optimum is at the grid's
    edge (``edges``): a claim that reads such a batch size is not scored (inconclusive)."""
    best, opt = best_lrs(batch_df)
    bmin, bmax = int(batch_df["batch"].min()), int(batch_df["batch"].max())
    edges = [(a, int(b)) for a, b, e in zip(opt["arm"], opt["batch"], opt["at_edge"]) if e]
    table = best.pivot_table(index=["seed", "batch"], columns="arm", values=["lr", "test_acc"], aggfunc="first")
    seeds = sorted({s for s, _ in table.index if (s, bmin) in table.index and (s, bmax) in table.index})

    def log_ratio(s, b):
        return math.log2(table.loc[(s, b), ("lr", "BN")] / table.loc[(s, b), ("lr", "SkipInit")])

    def gap(s, b):
        acc = table.loc[(s, b), "test_acc"].astype(float)
        return float(acc["BN"] - acc["SkipInit"])

    ok = not any(b in (bmin, bmax) for _, b in edges)
    return {"bmin": bmin, "bmax": bmax, "edges": edges, "seeds": seeds,
            "small-batch-lr-similar": [log_ratio(s, bmin) for s in seeds] if ok else [],
            "bn-lr-ratio-grows": [log_ratio(s, bmax) - log_ratio(s, bmin) for s in seeds] if ok else [],
            "small-batch-similar": [gap(s, bmin) for s in seeds] if ok else [],
            "bn-advantage-grows": [gap(s, bmax) - gap(s, bmin) for s in seeds] if ok else [],
            "gap_small": [gap(s, bmin) for s in seeds], "gap_large": [gap(s, bmax) for s in seeds],
            "ratio_small": [2 ** log_ratio(s, bmin) for s in seeds],
            "ratio_large": [2 ** log_ratio(s, bmax) for s in seeds]}


def grid_note(batch_df) -> str:
    """The lr grid per batch size, in words."""
    return "; ".join(f"batch {b}: lr {g.min():.4g} to {g.max():.4g}" for b, g in batch_df.groupby("batch")["lr"])


# ------------------------------------------------------------------ SkipInit variants
def variant_values(results: dict) -> dict:
    """The runs of ``skipinit_variants`` against their stored baselines.

    ``sqrt_d``: accuracy-or-chance of alpha = 1/sqrt(d) per seed at its depth, ``zero``: alpha = 0
    there (the depth sweep); ``frame``: BN, SkipInit and regularized SkipInit at the regularized
    arm's batch sizes (the batch sweep's runs and ours); ``best``/``optimum``: as :func:`best_lrs`;
    per batch size b, ``gap_reg[b]`` and ``gap_plain[b]`` (BN minus each arm, per seed) and
    ``edges``: the (arm, batch) whose optimum sits on the grid's edge (that batch is not scored)."""
    import pandas as pd

    runs = results["variants"]
    deep = depth_frame([r for r in runs if r.config["variant"] == SQRT_D]).sort_values("seed")
    dmax = int(deep["depth"].max())
    plain = depth_frame(results["depth"])
    plain = plain[(plain["variant"] == "skipinit") & (plain["depth"] == dmax)].sort_values("seed")
    reg = batch_frame([r for r in runs if r.config["variant"] == REG])
    base = batch_frame(results["batch"])
    frame = pd.concat([base[base["batch"].isin(set(reg["batch"]))], reg], ignore_index=True)
    best, opt = best_lrs(frame)
    edges = [(a, int(b)) for a, b, e in zip(opt["arm"], opt["batch"], opt["at_edge"]) if e and a != "SkipInit"]
    acc = best.pivot_table(index=["batch", "seed"], columns="arm", values="test_acc", aggfunc="first").astype(float)
    gaps = {name: {int(b): [float(g.loc[(b, s), "BN"] - g.loc[(b, s), arm]) for s in g.loc[b].index]
                   for b in sorted({b for b, _ in g.index})}
            for name, arm in (("gap_reg", BATCH_ARMS[REG]), ("gap_plain", "SkipInit"))
            for g in [acc.dropna(subset=["BN", arm])]}
    return {"dmax": dmax, "blocks": int(deep["blocks"].max()), "steps": int(deep["steps"].max()),
            "sqrt_d": list(deep["acc_or_chance"]), "zero": list(plain["acc_or_chance"]),
            "sqrt_d_diverged": int(deep["diverged"].sum()), "frame": frame, "best": best, "optimum": opt,
            "edges": edges, "batches": sorted(int(b) for b in set(reg["batch"])), **gaps}


def _variant_claims(results: dict, profile: str) -> list[Claim]:
    v = variant_values(results)
    r0 = next(r for r in results["variants"] if r.config["variant"] == SQRT_D).config
    b0 = next(r for r in results["variants"] if r.config["variant"] == REG).config
    widths = f"{r0['base_width']}-{4 * r0['base_width'] * r0['widen']}"
    sqrt_scale = (f"{profile} profile: {v['dmax']} layers ({v['blocks']} blocks, alpha = 1/sqrt(d) = "
                  f"{v['blocks'] ** -0.5:.3f} at init), channels {widths}, {r0['dataset']}, {v['steps']} steps "
                  f"of batch {r0['batch_size']}")
    claims = [VARIANT_CLAIMS["sqrt-d-trains-1000"].score(v["sqrt_d"], sqrt_scale)]
    for cid, b in zip(("reg-matches-bn-small-batch", "reg-matches-bn-larger-batch"), v["batches"]):
        at_edge = [a for a, bb in v["edges"] if bb == b]
        scale = (f"{profile} profile: ResNet-{b0['depth']}, batch {b}, {b0['epochs']} epochs over "
                 f"{b0['n_train'] or 'all'} {b0['dataset']} images, dropout {VARIANTS[REG]['dropout']:g} before the "
                 f"final layer; BN from the stored batch sweep; best lr per seed on the same grid")
        if at_edge:
            scale += "; not scored: the best lr lies on the grid's edge for " + ", ".join(at_edge)
        claims.append(VARIANT_CLAIMS[cid].score([] if at_edge else v["gap_reg"].get(b, []), scale))
    return claims


# ------------------------------------------------------------------ claims
def count_noun(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def score(results: dict, profile: str) -> list[Claim]:
    """The paper's claims vs ours, by the rules of :data:`SPECS` (one value per seed)."""
    var = variance_frame(results["variance"])
    lin = var[var["kind"] == "linear"].sort_values("seed")
    conv = var[var["kind"] == "conv"]
    depth = deepest_values(depth_frame(results["depth"]))
    batch_df = batch_frame(results["batch"])
    batch = batch_values(batch_df)
    vcfg = {r.config["kind"]: r.config for r in results["variance"]}
    dcfg, bcfg = results["depth"][-1].config, results["batch"][0].config
    device = results["depth"][0].provenance["device"]
    paths_cfg = results["paths"][0].config

    fig4a_scale = (f"{profile} profile: {vcfg['linear']['num_blocks']} blocks of width {vcfg['linear']['width']}, "
                   f"Gaussian inputs, {count_noun(len(lin), 'random network')}")
    fig4b_scale = (f"{profile} profile: ResNet-{vcfg['conv']['depth']} with BN, {vcfg['conv']['base_width']}-"
                   f"{4 * vcfg['conv']['base_width'] * vcfg['conv']['widen']} channels, {vcfg['conv']['dataset']}, "
                   f"{count_noun(conv['seed'].nunique(), 'random network')}")
    depth_scale = (f"{profile} profile: {depth['dmax']} layers, channels {dcfg['base_width']}-"
                   f"{4 * dcfg['base_width'] * dcfg['widen']}, {dcfg['dataset']}, "
                   f"{results['depth'][-1]['planned_steps']} steps of batch {dcfg['batch_size']}, {device}")
    compare_scale = depth_scale + ("" if depth["long_enough"] else
                                   f"; not scored: {depth['epochs']:.2f} epochs, below the "
                                   f"{COMPARE_EPOCHS} that a comparison of trained networks needs")
    batch_scale = (f"{profile} profile: ResNet-{bcfg['depth']}, {bcfg['epochs']} epochs over "
                   f"{bcfg['n_train'] or 'all'} {bcfg['dataset']} images at every batch size "
                   f"({batch['bmin']} to {batch['bmax']}), {grid_note(batch_df)}")
    if batch["edges"]:
        batch_scale += "; not scored: the best lr lies on the grid's edge for " + ", ".join(
            f"{a} at batch {b}" for a, b in batch["edges"])

    stage = {k: list(conv[conv["stage"] == k].sort_values("seed")["ratio"]) for k in (1, 2, 3)}
    return [
        PATHS_97.score(share_within(HEADLINE_BLOCKS, HEADLINE_BRANCHES, stem_variance=1.0),
                       "exact: the distribution computed in float64"),
        PATHS_CLAIMS["paths-mc-agrees"].score(
            mc_deviation(results["paths"][0]),
            f"{paths_cfg['num_blocks']} blocks, width {paths_cfg['width']}, {paths_cfg['n_networks']} networks"),
        VARIANCE_CLAIMS["fig4a-skip-slope"].score(list(lin["slope"]), fig4a_scale),
        *[VARIANCE_CLAIMS[f"fig4b-stage{k}-slope"].score(stage[k], fig4b_scale) for k in (1, 2, 3)],
        DEPTH_CLAIMS["skipinit-trains-1000"].score(depth["acc"].get("skipinit", []), depth_scale),
        DEPTH_CLAIMS["skipinit-comparable-1000"].score(depth["paired"], compare_scale),
        DEPTH_CLAIMS["alpha1-fails"].score(depth["acc"].get("alpha1", []), depth_scale),
        DEPTH_CLAIMS["sqrt2-fails"].score(depth["acc"].get("sum_sqrt2", []), depth_scale),
        *[BATCH_CLAIMS[cid].score(batch[cid], batch_scale) for cid in BATCH_CLAIMS],
        *_variant_claims(results, profile),
    ]


def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile``, from the stored runs (run if missing)."""
    return score(load(profile, device, verbose=False), profile)
