"""The chapter "Accelerating BN networks: the recipe": its runs, tables and scored claims.

``book/bn_recipe.ipynb`` reads the ``bn_recipe`` experiment
(:mod:`bnrepro.experiments.bn_recipe`): a BN conv net trained as before Ioffe &
Szegedy's recipe (the baseline), with each change of their Sec. 4.2.1 alone,
and with all of them, three seeds each. This module loads the runs
(:func:`load`), tabulates them (:func:`runs_frame`, :func:`arm_summary`), finds
the speed target and each run's steps to it (:func:`speed`) and scores the
claims registered with the experiment (:func:`score`, :data:`SPECS`).
"""

from __future__ import annotations

import math

from ..core.claims import Claim, interval
from ..core.store import Result
from ..experiments.bn_recipe import ARMS, CHANGES, CLAIMS, FULL, TARGET_FRACTION, arm_of, sweep
from ..runner import load_or_run

#: Every claim the chapter scores, in its table's order.
SPECS = tuple(CLAIMS.values())
#: The arm each per-change claim compares with the baseline.
CLAIM_ARMS = {
    "recipe-reaches-target-sooner": FULL, "recipe-final-accuracy-not-lower": FULL,
    "higher-lr-reaches-target-sooner": "5x higher lr", "no-dropout-reaches-target-sooner": "no dropout",
    "no-dropout-no-more-overfitting": "no dropout", "less-l2-more-accurate": "5x less L2",
    "no-lrn-not-needed": "no LRN", "thorough-shuffling-more-accurate": "thorough shuffling",
}
#: Claims scored on the steps to the target (the others on the final test accuracy).
SPEED_CLAIMS = ("recipe-reaches-target-sooner", "higher-lr-reaches-target-sooner", "no-dropout-reaches-target-sooner")


def load(profile: str, device=None, verbose: bool = True) -> list[Result]:
    """Every run of the sweep (every arm x seed), from the results store (run if missing)."""
    return [load_or_run(cfg, device=device, verbose=verbose) for cfg in sweep(profile)]


def runs_frame(results: list[Result]):
    """One row per run: its arm, seed, final numbers and the test accuracy a quarter into training."""
    import pandas as pd

    rows = []
    for r in results:
        h = r.data.history
        quarter = h.total_steps / 4
        early = [e["test_acc"] for e in h.evals if e["step"] <= quarter]
        rows.append({"arm": arm_of(r.config), "seed": r.config["seed"], "test_acc": r.data.eval_acc,
                     "quarter_acc": early[-1] if early else math.nan,
                     "train_acc": h.epochs[-1]["train_acc"] if h.epochs else math.nan,
                     "steps": h.total_steps, "diverged": h.diverged, "wall_s": r.provenance["wall_time_s"]})
    return pd.DataFrame(rows)


def steps_to(result: Result, target: float) -> float:
    """The first evaluated step at which the test accuracy reaches ``target``; a run that never
    does counts one evaluation after its last step (the rule fixed with the claims)."""
    for ev in result.data.history.evals:
        if ev["test_acc"] >= target:
            return float(ev["step"])
    return float(result.data.history.total_steps + result.config["eval_every_steps"])


def speed(results: list[Result]) -> dict:
    """The target (TARGET_FRACTION x the lowest arm's mean final test accuracy) and, per arm,
    each seed's steps to it."""
    df = runs_frame(results)
    means = df.groupby("arm")["test_acc"].mean()
    target = TARGET_FRACTION * float(means.min())
    steps: dict[str, dict[int, float]] = {}
    for r in results:
        steps.setdefault(arm_of(r.config), {})[r.config["seed"]] = steps_to(r, target)
    return {"target": target, "lowest_arm": str(means.idxmin()), "steps": steps}


def _by_seed(df, arm: str, column: str = "test_acc") -> dict[int, float]:
    sel = df[df["arm"] == arm]
    return dict(zip(sel["seed"], sel[column]))


def paired(results: list[Result], arm: str) -> dict[str, list[float]]:
    """``arm`` against the baseline, seed by seed: ``speedup`` (steps to the target, baseline / arm)
    and ``gain`` (final test accuracy, arm - baseline)."""
    df = runs_frame(results)
    sp = speed(results)["steps"]
    base_steps, arm_steps = sp.get("baseline", {}), sp.get(arm, {})
    base_acc, arm_acc = _by_seed(df, "baseline"), _by_seed(df, arm)
    return {"speedup": [base_steps[s] / arm_steps[s] for s in sorted(base_steps) if s in arm_steps],
            "gain": [arm_acc[s] - base_acc[s] for s in sorted(base_acc) if s in arm_acc]}


def effects(results: list[Result]):
    """Per arm but the baseline: the mean and 95% interval of its paired speed-up and accuracy gain."""
    import pandas as pd

    rows = []
    for arm in ARMS[1:]:
        p = paired(results, arm)
        if not p["gain"]:
            continue
        row = {"arm": arm}
        for key, values in p.items():
            mean, low, high = interval(values)
            row.update({key: sum(values) / len(values), f"{key}_low": low, f"{key}_high": high})
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")


def claim_values(results: list[Result]) -> dict[str, list[float]]:
    """Each claim's per-seed values: steps ratios (baseline / arm) or accuracy differences (arm - baseline)."""
    return {cid: paired(results, arm)["speedup" if cid in SPEED_CLAIMS else "gain"]
            for cid, arm in CLAIM_ARMS.items()}


def arm_summary(results: list[Result]):
    """Per arm, in :data:`ARMS` order: mean final test accuracy with its 95% interval, the accuracy
    difference to the baseline and the steps to the target (means over seeds)."""
    import pandas as pd

    df = runs_frame(results)
    sp = speed(results)
    base = _by_seed(df, "baseline")
    rows = []
    for arm in ARMS:
        accs = _by_seed(df, arm)
        if not accs:
            continue
        mean, low, high = interval(list(accs.values()))
        diff = [accs[s] - base[s] for s in sorted(accs) if s in base]
        steps = sp["steps"].get(arm, {})
        rows.append({"arm": arm, "change": "" if arm in ("baseline", FULL) else _describe(CHANGES[arm]),
                     "test_acc": mean if len(accs) > 1 else next(iter(accs.values())),
                     "low": low, "high": high, "vs_baseline": sum(diff) / len(diff) if diff else math.nan,
                     "quarter_acc": df[df["arm"] == arm]["quarter_acc"].mean(),
                     "steps_to_target": sum(steps.values()) / len(steps) if steps else math.nan,
                     "seeds": len(accs)})
    return pd.DataFrame(rows).set_index("arm")


#: How the chapter's tables name the recipe's settings and their values.
SETTING_NAMES = {"lr": "learning rate", "dropout": "dropout", "weight_decay": "L2 weight decay",
                 "decay_speed": "lr decay speed", "lrn": "LRN", "shuffle": "batches", "jitter": "photometric strength"}
SHUFFLE_NAMES = {"fixed_batches": "fixed, reordered", "epoch": "new every epoch"}


def setting_value(key: str, value) -> str:
    """A setting's value as the chapter shows it, e.g. ``0.05``, ``6x`` or ``new every epoch``."""
    if key == "shuffle":
        return SHUFFLE_NAMES[value]
    if key == "lrn":
        return "yes" if value else "no"
    return f"{value:g}x" if key == "decay_speed" else f"{value:g}"


def describe_setting(key: str, value) -> str:
    """One setting as the chapter shows it, e.g. ``learning rate 0.05`` or ``no LRN``."""
    if key == "lrn":
        return "LRN" if value else "no LRN"
    return f"{SETTING_NAMES[key]} {setting_value(key, value)}"


def _describe(change: dict) -> str:
    return ", ".join(describe_setting(k, v) for k, v in change.items())


def score(results: list[Result], profile: str) -> list[Claim]:
    """The paper's claims vs ours, one value per seed (paired by seed), by the rules of :data:`SPECS`."""
    cfg = results[0].config
    seeds = len({r.config["seed"] for r in results})
    data = "all" if cfg["n_train"] is None else f"{cfg['n_train']:,}"
    steps = results[0].data.history.total_steps
    scale = (f"{profile} profile, {cfg['dataset']} ({data} training images), small BN conv net, "
             f"{steps} steps at batch {cfg['batch_size']}, {seeds} seed{'s' if seeds != 1 else ''}")
    values = claim_values(results)
    return [spec.score(values[spec.id], scale) for spec in SPECS]


def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile``, from the stored runs (run if missing)."""
    return score(load(profile, device, verbose=False), profile)
