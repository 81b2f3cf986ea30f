"""The chapter "Training only BatchNorm (Frankle et al.)": its runs, tables and scored claims.

``book/bn_only.ipynb`` reads the groups of ``bn_only`` runs of
:func:`bnrepro.experiments.bn_only.sweep_groups` (the four arms at the base
depth, BN-only at three depths, BN-only from three gamma initialisers), every
point with the same seeds. This module loads them (:func:`load`), tabulates
them (:func:`runs_frame`, :func:`curves_frame`, :func:`ablation_frame`),
reduces them to one value per seed for each claim (:func:`per_seed`) and
scores them (:func:`score`); :func:`claims` is the scorecard's entry point.
"""

from __future__ import annotations

from ..core.claims import Claim
from ..core.store import Result
from ..experiments.bn_only import CLAIMS, sweep_groups
from ..runner import load_groups

#: Every claim the chapter scores, in its table's order.
SPECS = tuple(CLAIMS.values())

#: The threshold on |gamma| the claims use (one of the runs' ``gamma_thresholds``).
THRESHOLD = 0.1

#: How the chapter names the arms (the config's ``trainable``).
ARM_LABEL = {"bn": "BN only", "random": "2 random weights / channel", "all": "all (full training)",
             "output": "output layer only (probe)"}


def load(profile: str, device=None, verbose: bool = True) -> dict[str, list[Result]]:
    """The results of every group of :func:`sweep_groups`, from the store (run if missing)."""
    return load_groups(sweep_groups(profile), device=device, verbose=verbose)


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
    }


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
    }


def score(groups: dict[str, list[Result]], profile: str) -> list[Claim]:
    """The paper's and the blog's claims vs ours, one value per seed, by the rules of :data:`SPECS`."""
    values, scale = per_seed(groups), scales(groups, profile)
    return [spec.score(values[spec.id], f"{scale[spec.id]}, {len(values[spec.id])} seeds ({profile} profile)")
            for spec in SPECS]


def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile``, from the stored runs (run if missing)."""
    return score(load(profile, device, verbose=False), profile)
