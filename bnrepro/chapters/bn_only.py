"""The chapter "Training only BatchNorm (Frankle et al.)": its runs, tables and scored claims.

``book/bn_only.ipynb`` reads the groups of ``bn_only`` runs of
:func:`bnrepro.experiments.bn_only.sweep_groups` (the four arms at the base
depth, BN-only at three depths, BN-only from three gamma initialisers), every
point with the same seeds. This module loads them (:func:`load`), tabulates
them (:func:`runs_frame`, :func:`curves_frame`, :func:`ablation_frame`),
reduces them to one value per seed for each claim (:func:`per_seed`) and
scores them (:func:`score`); :func:`claims` is the scorecard's entry point.

It also reads the two arms of ``bn_only_extras`` (the blog's ideas: the
shortcut convolutions unfrozen, zero gamma at every residual branch's end),
paired with the ``bn_only`` BN-only runs whose configs are identical, scores
two features of the stored validation curves the blog describes
(:data:`CURVE_SPECS`: a late rise and instability) and checks live what
gamma = 0 everywhere does to the gradients (:data:`CHECK_SPECS`).
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F

from ..core.claims import CHECK, EMPIRICAL, Claim, ClaimSpec, at_least, within
from ..core.store import Result
from ..data import load_dataset
from ..experiments import bn_only_extras as extras
from ..experiments.bn_only import CLAIMS, BNOnlyConfig, build_network, sweep_groups
from ..runner import load_groups

_BLOG = "seed_bnonly_blog"
_CURVES = "What If Only Batch Normalization Layers Were Trained?, training curves"
_IDEAS = "What If Only Batch Normalization Layers Were Trained?, ideas for further work"
#: Features of the stored ``bn_only`` validation curves (BN-only against full training at the base
#: depth), written down before those curves were read; not registered (no run of their own).
CURVE_SPECS = (
    ClaimSpec("bnonly-val-rises-late", EMPIRICAL, "BN-only: the fraction of the run at which the test "
              "accuracy first reaches halfway from chance to its final value", "rises only after about "
              "10 of 50 epochs", at_least(0.2), "the blog's validation accuracy starts to rise after about "
              "10 of its 50 epochs (20% of the run); the midpoint of a rise comes no earlier than its start",
              source=_BLOG, where=_CURVES),
    ClaimSpec("bnonly-val-unstable", EMPIRICAL, "total fall of the test accuracy between consecutive epochs "
              "at the initial learning rate: BN-only minus full training, same seed", "unstable",
              at_least(0.02, null=0.0), "'unstable' read against ordinary training: at least 2 points more "
              "falling back in total, about twice the standard error of one evaluation on 2,000 test "
              "images; a smaller positive excess is partly", source=_BLOG, where=_CURVES),
)
#: The zero-gamma question, checked on our code (live, one batch): gamma = 0 everywhere cannot train.
CHECK_SPECS = (
    ClaimSpec("zero-gamma-everywhere-is-dead", CHECK, "γ = β = 0 in every BN: the largest |gradient| of any "
              "γ or β at initialisation (one batch, training mode)", "zero-γ init: an idea to try",
              within(0.0, 0.0), "every BN outputs 0 and every ReLU receives exactly 0, where its gradient "
              "is 0: no BN parameter can move", source=_BLOG, where=_IDEAS, fmt="{:.2g}"),
    ClaimSpec("zero-residual-gamma-trains", CHECK, "γ = 0 only at the end of every residual branch: the "
              "smallest gradient norm of those γ at initialisation (one batch)", "zero-γ init: an idea to try",
              at_least(1e-6), "the shortcut carries a non-zero signal to every branch's end, so the "
              "zeroed γ get gradient", source=_BLOG, where=_IDEAS, fmt="{:.2g}"),
)

#: Every claim the chapter scores, in its table's order.
SPECS = tuple(CLAIMS.values()) + tuple(extras.CLAIMS.values()) + CURVE_SPECS + CHECK_SPECS

#: Chance accuracy (both datasets have 10 classes).
CHANCE = 0.1

#: The threshold on |gamma| the claims use (one of the runs' ``gamma_thresholds``).
THRESHOLD = 0.1

#: How the chapter names the arms (the config's ``trainable``).
ARM_LABEL = {"bn": "BN only", "random": "2 random weights / channel", "all": "all (full training)",
             "output": "output layer only (probe)", "bn_shortcut": "BN + 1×1 shortcut convolutions"}


def groups_of(profile: str) -> dict[str, list]:
    """The chapter's groups of configs: ``bn_only``'s (arms, depth, init), the ``bn_only_extras``
    arms (shortcut, zero_residual) and their baseline (``extras_baseline``, runs of ``arms``)."""
    return {**sweep_groups(profile), **extras.sweep_groups(profile),
            "extras_baseline": extras.baseline_configs(profile)}


def load(profile: str, device=None, verbose: bool = True) -> dict[str, list[Result]]:
    """The results of every group of :func:`groups_of`, from the store (run if missing)."""
    return load_groups(groups_of(profile), device=device, verbose=verbose)


def all_results(groups: dict[str, list[Result]]) -> list[Result]:
    """Every distinct run of ``groups`` once (a run may serve several groups)."""
    seen, out = set(), []
    for results in groups.values():
        for r in results:
            if id(r) not in seen:
                seen.add(id(r))
                out.append(r)
    return out


def runs_frame(results: list[Result]):
    """One row per run: its config fields and what it measured (a pandas DataFrame)."""
    import pandas as pd

    return pd.DataFrame([{**r.config, "test_acc": r.data.test_acc, "train_acc": r.data.train_acc,
                          "trainable_params": r.data.trainable, "bn_params": r.data.bn_params,
                          "epochs_run": len(r.data.history.epochs), "wall_s": r.provenance["wall_time_s"],
                          "diverged": r.data.history.diverged} for r in results])


def curves_frame(results: list[Result]):
    """One row per run and epoch: the learning curves."""
    import pandas as pd

    return pd.DataFrame([{"trainable": r.config["trainable"], "depth": r.config["depth"],
                          "bn_init": r.config["bn_init"], "seed": r.config["seed"], **e}
                         for r in results for e in r.data.history.epochs])


def ablation_frame(results: list[Result]):
    """One row per run that trains gamma and threshold: fractions of small |gamma| and the ablation."""
    import pandas as pd

    rows = []
    for r in results:
        for a in r.data.get("gamma_analysis", []):
            rows.append({"trainable": r.config["trainable"], "depth": r.config["depth"],
                         "bn_init": r.config["bn_init"], "seed": r.config["seed"], **a,
                         "drop_small": a["acc"] - a["acc_small_off"],
                         "drop_random": a["acc"] - a["acc_random_off"],
                         "drop_init_small": a["acc"] - a["acc_init_small_off"]})
    return pd.DataFrame(rows)


def rise_fraction(epochs: list[dict], chance: float = CHANCE) -> float:
    """The fraction of the run (epoch / epochs) at which the test accuracy first reaches halfway from
    ``chance`` to its final value (a run that ends below chance: where it first reaches its final value)."""
    acc = [e["test_acc"] for e in epochs]
    level = min(acc[-1], chance + 0.5 * (acc[-1] - chance))
    return next(i for i, a in enumerate(acc, 1) if a >= level) / len(acc)


def total_fall(epochs: list[dict]) -> float:
    """The sum of the epoch-to-epoch falls of the test accuracy over the epochs at the initial lr."""
    acc = [e["test_acc"] for e in epochs if e["lr"] == epochs[0]["lr"]]
    return sum(max(0.0, a - b) for a, b in zip(acc, acc[1:]))


def curve_frame(results: list[Result]):
    """One row per run of the base depth's BN-only and full-training arms: the curve features."""
    import pandas as pd

    return pd.DataFrame([{"trainable": r.config["trainable"], "seed": r.config["seed"],
                          "rise_fraction": rise_fraction(r.data.history.epochs),
                          "total_fall": total_fall(r.data.history.epochs), "test_acc": r.data.test_acc}
                         for r in results if r.config["trainable"] in ("bn", "all")])


def zero_gamma_values(profile: str, n: int = 128) -> dict[str, float]:
    """The two checks of :data:`CHECK_SPECS` on the base depth's network and one batch of real images."""
    cfg = BNOnlyConfig.for_profile(profile, depth=sweep_groups(profile)["arms"][0].depth)
    data = load_dataset(cfg.dataset, device="cpu", n_train=n, n_test=2)
    x = F.avg_pool2d(data.x_train, cfg.image_pool) if cfg.image_pool > 1 else data.x_train
    out = {}
    for key, init in (("zero-gamma-everywhere-is-dead", "zero"), ("zero-residual-gamma-trains", "zero_residual")):
        model = build_network(dataclasses.replace(cfg, bn_init=init), data.in_channels, data.num_classes)
        g = extras.zero_gamma_gradients(model, x, data.y_train, init, seed=cfg.seed)
        out[key] = g["max_abs_grad"] if init == "zero" else g["min_branch_gamma_grad_norm"]
    return out


def _by_seed(frame, **where) -> dict[int, float]:
    rows = frame
    for key, value in where.items():
        rows = rows[rows[key] == value]
    return dict(zip(rows["seed"].astype(int), rows["test_acc"].astype(float)))


def _paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """a - b for every seed both have, in seed order."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def per_seed(groups: dict[str, list[Result]]) -> dict[str, list[float]]:
    """Each claim's values, one per seed (differences are paired by seed)."""
    arms = runs_frame(groups["arms"])
    depth = runs_frame(groups["depth"])
    init = runs_frame(groups["init"])
    ab = ablation_frame(groups["arms"])
    ab = ab[(ab["trainable"] == "bn") & (ab["threshold"] == THRESHOLD)].sort_values("seed")
    depths = sorted(set(depth["depth"]))
    bn = _by_seed(arms, trainable="bn")
    return {
        "bn-beats-random": _paired(bn, _by_seed(arms, trainable="random")),
        "bn-beats-output": _paired(bn, _by_seed(arms, trainable="output")),
        "depth-helps": _paired(_by_seed(depth, depth=depths[-1]), _by_seed(depth, depth=depths[0])),
        "third-disabled": list(ab["frac_small"]),
        "disabling-is-learned": list(ab["frac_small"] - ab["frac_small_init"]),
        "small-gamma-dispensable": list(ab["drop_small"]),
        "ones-too-symmetric": _paired(_by_seed(init, bn_init="he_normal"), _by_seed(init, bn_init="fixed")),
        **extras_per_seed(groups),
    }


def extras_per_seed(groups: dict[str, list[Result]]) -> dict[str, list[float]]:
    """The extras' and the curves' claims, one value per seed (paired by seed)."""
    base = _by_seed(runs_frame(groups["extras_baseline"]))
    curves = curve_frame(groups["arms"])
    bn, full = curves[curves["trainable"] == "bn"], curves[curves["trainable"] == "all"]
    fall = _paired(dict(zip(bn["seed"], bn["total_fall"])), dict(zip(full["seed"], full["total_fall"])))
    return {"shortcut-unfrozen-helps": _paired(_by_seed(runs_frame(groups["shortcut"])), base),
            "zero-gamma-no-worse": _paired(_by_seed(runs_frame(groups["zero_residual"])), base),
            "bnonly-val-rises-late": list(bn.sort_values("seed")["rise_fraction"]),
            "bnonly-val-unstable": fall}


def scales(groups: dict[str, list[Result]], profile: str) -> dict[str, str]:
    """What each claim's values were measured on, in words."""
    base = groups["arms"][0]
    c = base.config
    size = base.data.image_size
    n_train = "all" if c["n_train"] is None else f"{c['n_train']:,}"
    data = f"{c['dataset']} {size}×{size}, {n_train} images, {c['epochs']} epochs"
    depths = sorted({r.config["depth"] for r in groups["depth"]})
    init_depth = groups["init"][0].config["depth"]
    arms = f"ResNet-{c['depth']}, {data}"
    return {
        "bn-beats-random": arms,
        "bn-beats-output": arms + f"; probe {c['probe_epochs']} epochs on cached features",
        "depth-helps": f"ResNet-{depths[-1]} vs ResNet-{depths[0]}, {data}",
        "third-disabled": arms, "disabling-is-learned": arms, "small-gamma-dispensable": arms,
        "ones-too-symmetric": f"ResNet-{init_depth}, {data}",
        "shortcut-unfrozen-helps": arms, "zero-gamma-no-worse": arms,
        "bnonly-val-rises-late": arms + ", 1 evaluation per epoch", "bnonly-val-unstable": arms,
        "zero-gamma-everywhere-is-dead": f"ResNet-{c['depth']}, {size}×{size}",
        "zero-residual-gamma-trains": f"ResNet-{c['depth']}, {size}×{size}",
    }


def score(groups: dict[str, list[Result]], profile: str) -> list[Claim]:
    """The paper's and the blog's claims vs ours, one value per seed, by the rules of :data:`SPECS`
    (the checks: one value each, computed now)."""
    values, scale = {**per_seed(groups), **zero_gamma_values(profile)}, scales(groups, profile)
    return [spec.score(values[spec.id], f"{scale[spec.id]}, {len(values[spec.id])} seeds ({profile} profile)")
            if spec.kind == EMPIRICAL else spec.score(values[spec.id], f"{scale[spec.id]} ({profile} profile)")
            for spec in SPECS]


def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile``, from the stored runs (run if missing)."""
    return score(load(profile, device, verbose=False), profile)
