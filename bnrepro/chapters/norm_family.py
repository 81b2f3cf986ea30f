"""The chapter "The normalization family": its runs, tables and scored claims.

``book/norm_family.ipynb`` reads the four studies of the ``norm_family``
experiment (:func:`bnrepro.experiments.norm_family.sweep_groups`): the five
normalizations at batch 32, BN vs GroupNorm from batch 2 to 32, BN before vs
after the nonlinearity, and BN vs none on a learning-rate grid. This module
loads them (:func:`load`), tabulates them (:func:`runs_frame`,
:func:`speed_summary`) and scores them (:func:`score`) by the rules registered
with the experiment (:data:`SPECS`).
"""

from __future__ import annotations

import math

from ..core.claims import Claim
from ..core.store import Result
from ..experiments.norm_family import CLAIMS, SPEED_LRS, sweep_groups
from ..runner import load_groups

#: Every claim the chapter scores, in its table's order.
SPECS = tuple(CLAIMS.values())
NAMES = {"bn": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm", "instance": "InstanceNorm", "none": "none"}


def load(profile: str, device=None, verbose: bool = True) -> dict[str, list[Result]]:
    """The results of every study of :func:`sweep_groups`, from the store (run if missing)."""
    return load_groups(sweep_groups(profile), device=device, verbose=verbose)


def runs_frame(results: list[Result]):
    """One row per run: its config and its final numbers (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for r in results:
        h = r.data.history
        rows.append({**{k: r.config[k] for k in ("norm", "placement", "activation", "batch_size", "lr", "seed")},
                     "test_acc": r.data.eval_acc, "train_mode_acc": r.data.train_mode_acc,
                     "saturation": r.data.saturation, "train_acc": h.epochs[-1]["train_acc"] if h.epochs else math.nan,
                     "diverged": h.diverged, "wall_s": r.provenance["wall_time_s"]})
    return pd.DataFrame(rows)


def _by_seed(df, **where) -> dict[int, float]:
    sel = df
    for key, value in where.items():
        sel = sel[sel[key] == value]
    return dict(zip(sel["seed"], sel["test_acc"]))


def _paired(a: dict, b: dict) -> list[float]:
    return [a[s] - b[s] for s in sorted(a) if s in b]


def steps_to(result: Result, target: float) -> float:
    """The first evaluated step at which the test accuracy reaches ``target`` (NaN if never)."""
    for ev in result.data.history.evals:
        if ev["test_acc"] >= target:
            return float(ev["step"])
    return math.nan


def speed_summary(results: list[Result]) -> dict:
    """Each arm's best lr (highest mean final test accuracy over seeds), whether it sits at the
    grid's edge, the target (0.9 x the lower arm's final accuracy) and per-seed steps to it."""
    df = runs_frame(results)
    means = df.groupby(["norm", "lr"])["test_acc"].mean()
    best = {arm: float(means.loc[arm].idxmax()) for arm in ("bn", "none")}
    edge = {arm: lr in (min(SPEED_LRS), max(SPEED_LRS)) for arm, lr in best.items()}
    target = 0.9 * min(float(means.loc[(arm, lr)]) for arm, lr in best.items())
    steps = {arm: {r.config["seed"]: steps_to(r, target) for r in results
                   if r.config["norm"] == arm and r.config["lr"] == best[arm]} for arm in best}
    final = {arm: _by_seed(df, norm=arm, lr=best[arm]) for arm in best}
    return {"means": means, "best_lr": best, "at_edge": edge, "target": target, "steps": steps, "final": final}


def score(groups: dict[str, list[Result]], profile: str) -> list[Claim]:
    """The papers' claims vs ours, one value per seed (paired by seed), by the rules of :data:`SPECS`."""
    fam = runs_frame(groups["family"])
    small = runs_frame(groups["small_batch"])
    place = runs_frame(groups["placement"])
    speed = speed_summary(groups["speed"])
    first = groups["family"][0]
    where = f"{profile} profile, {first.config['dataset']} ({first.config['n_train']} train images), small conv net"
    seeds = len(set(fam["seed"]))
    family_scale = f"{where}, batch 32, {first.config['epochs']} epochs, {seeds} seeds"
    small_scale = (f"{where}, batch 2-32, {groups['small_batch'][0].config['epochs']} epochs, lr scaled with "
                   f"the batch, {seeds} seeds")
    acc = {n: _by_seed(fam, norm=n) for n in ("bn", "group", "layer", "instance")}
    bn2, bn32 = _by_seed(small, norm="bn", batch_size=2), _by_seed(small, norm="bn", batch_size=32)
    gn2, gn32 = _by_seed(small, norm="group", batch_size=2), _by_seed(small, norm="group", batch_size=32)
    bn2_rows = small[(small["norm"] == "bn") & (small["batch_size"] == 2)].sort_values("seed")
    sig = place[place["activation"] == "sigmoid"]
    sat_after = dict(zip(sig[sig["placement"] == "after"]["seed"], sig[sig["placement"] == "after"]["saturation"]))
    sat_before = dict(zip(sig[sig["placement"] == "before"]["seed"], sig[sig["placement"] == "before"]["saturation"]))
    edge = any(speed["at_edge"].values())  # the rule: a best lr at the grid's edge leaves both claims inconclusive
    ratio = [] if edge else [speed["steps"]["none"][s] / speed["steps"]["bn"][s] for s in sorted(speed["steps"]["bn"])
                             if s in speed["steps"]["none"]]
    final_gap = [] if edge else _paired(speed["final"]["bn"], speed["final"]["none"])
    speed_scale = (f"{where}, batch 32, best lr of {', '.join(map(str, SPEED_LRS))} per arm "
                   f"(BN {speed['best_lr']['bn']:g}, none {speed['best_lr']['none']:g}), {seeds} seeds")
    c = CLAIMS
    return [
        c["gn-comparable-to-bn"].score(_paired(acc["group"], acc["bn"]), family_scale),
        c["gn-beats-layernorm"].score(_paired(acc["group"], acc["layer"]), family_scale),
        c["gn-beats-instancenorm"].score(_paired(acc["group"], acc["instance"]), family_scale),
        c["bn-error-rises-at-small-batch"].score(_paired(bn32, bn2), small_scale),
        c["gn-beats-bn-at-batch-2"].score(_paired(gn2, bn2), small_scale),
        c["gn-stable-across-batch"].score(_paired(gn32, gn2), small_scale),
        c["bn-batch-stats-inaccurate-at-batch-2"].score(
            list(bn2_rows["test_acc"] - bn2_rows["train_mode_acc"]), small_scale),
        c["bn-before-sigmoid-less-saturated"].score(_paired(sat_after, sat_before),
                                                    f"{where}, BN + sigmoid, batch 32, {seeds} seeds"),
        c["bn-reaches-target-sooner"].score(ratio, speed_scale),
        c["bn-same-final-accuracy"].score(final_gap, speed_scale),
    ]


def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile``, from the stored runs (run if missing)."""
    return score(load(profile, device, verbose=False), profile)
