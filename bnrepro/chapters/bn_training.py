"""The chapter "BN in training (Ioffe & Szegedy)": its runs, tables and scored claims.

``book/bn_training.ipynb`` reads the ``bn_training`` runs of
:func:`bnrepro.experiments.bn_training.groups` (Figure 1, Table 2's learning
rates, deep sigmoid networks, d2l's exercises). This module loads them
(:func:`load`), turns them into the chapter's tables and numbers
(:func:`runs_table`, :func:`quantities`) and scores them (:func:`score`);
:func:`claims` is the scorecard's entry point, so the chapter and the
scorecard can never disagree. Every rule and threshold below was fixed
before the runs; the chapter's "Claims" section states them in prose.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import torch

from ..core.claims import Claim, at_least, at_most
from ..core.store import Result
from ..experiments import bn_training as bt
from ..runner import load_or_run

#: How the chapter names the two arms of Figure 1.
ARM = {"bn": "BN", "none": "no BN"}
IS = "Ioffe & Szegedy 2015"

#: Test accuracy the "steps to reach X" metric uses, fixed before any run.
#: Table 2's target is Inception's final 72.2%; ours is a level both arms of
#: Figure 1 can reach within the cpu budget on each dataset.
TARGET_ACC = {"fashion-mnist": 0.85, "mnist": 0.96, "cifar10": 0.45}
#: Final test accuracy below this counts as "did not learn" (chance is 0.10).
NO_LEARNING_ACC = 0.20


def steps_to_reach(evals: Sequence[dict], target: float) -> int | None:
    """The first evaluated step whose test accuracy is >= ``target`` (None: never)."""
    for e in evals:
        if e.get("test_acc") is not None and e["test_acc"] >= target:
            return int(e["step"])
    return None


def outcome(data: dict, target: float) -> str:
    """``"diverged"`` (NaN loss), ``"no learning"`` (final accuracy < NO_LEARNING_ACC),
    ``"below target"`` or ``"reached target"`` (test accuracy >= target at some evaluation)."""
    if data["history"]["diverged"]:
        return "diverged"
    if steps_to_reach(data["history"]["evals"], target) is not None:
        return "reached target"
    final = data.get("final_test_acc")
    if final is None or not math.isfinite(final) or final < NO_LEARNING_ACC:
        return "no learning"
    return "below target"


def median_drift(probe: dict, start_frac: float = 0.5) -> float:
    """How much the sigmoid input's median moves late in training, relative to its spread.

    For each recorded unit, over the probes at steps >= ``start_frac`` of the
    last probed step: (max - min of the 50th percentile) / mean(85th - 15th
    percentile). Returns the median over units (NaN without probes).
    Scale-free, so the BN and plain networks compare on one footing.
    """
    steps, values = probe["steps"], probe["values"]
    if not steps:
        return math.nan
    cut = start_frac * steps[-1]
    rows = [v for s, v in zip(steps, values) if s >= cut]
    drifts = []
    for u in range(len(rows[0])):
        p15 = [r[u][0] for r in rows]
        p50 = [r[u][1] for r in rows]
        p85 = [r[u][2] for r in rows]
        if any(x is None for x in p15 + p50 + p85):
            return math.nan
        width = statistics.fmean(b - a for a, b in zip(p15, p85))
        drifts.append((max(p50) - min(p50)) / width if width > 0 else math.inf)
    return statistics.median(drifts)


def load(profile: str, device=None, verbose: bool = True) -> dict[str, Result]:
    """Every run of the chapter's sweep by config hash, from the results store (run if missing)."""
    return {cfg.hash(): load_or_run(cfg, device=device, verbose=verbose) for cfg in bt.sweep(profile)}


def ratio(num, den) -> float:
    """num / den as a Python float (NaN when either is missing or den is 0)."""
    num, den = float(num), float(den)
    return num / den if den and math.isfinite(den) and math.isfinite(num) else math.nan


def _nan_if_none(x) -> float:
    return math.nan if x is None else float(x)


def summary_row(cfg, res: Result, target: float) -> dict:
    """One run's numbers: final/best accuracy, steps to ``target`` (censored at the budget), outcome, drift."""
    d = res.data
    reached = steps_to_reach(d["history"]["evals"], target)
    return {"hash": cfg.hash(), "norm": cfg.norm, "arm": ARM.get(cfg.norm, cfg.norm),
            "lr_mult": cfg.lr_mult, "lr": cfg.effective_lr, "depth": cfg.depth, "seed": cfg.seed,
            "init_std": cfg.init_std, "budget": cfg.steps,
            "final_acc": _nan_if_none(d["final_test_acc"]), "best_acc": _nan_if_none(d["best_test_acc"]),
            "reached": reached is not None,
            "steps_to_target": reached if reached is not None else cfg.steps,  # censored at the budget
            "outcome": outcome(d, target), "drift": median_drift(d["probe"]),
            "diverged_at": d["history"]["diverged_at_step"],
            "wall_s": res.provenance.get("wall_time_s", math.nan)}


def runs_table(results: dict[str, Result], cfgs: Sequence, target: float):
    """A pandas DataFrame, one :func:`summary_row` per config (in the given order)."""
    import pandas as pd

    return pd.DataFrame([summary_row(c, results[c.hash()], target) for c in cfgs])


def fig1_per_arm(fig1):
    """Figure 1's runs (lr x1, every seed) per arm: mean final accuracy, steps to X, drift."""
    return fig1.groupby("arm").agg(runs=("seed", "count"), final_acc=("final_acc", "mean"),
                                   steps_to_target=("steps_to_target", "mean"),
                                   all_reached=("reached", "all"), drift=("drift", "mean"))


def bias_gradient_check(cfg, seed: int = 0) -> dict[str, float]:
    """Exact check, in float64, that a bias before BN changes nothing and gets no gradient.

    Builds the config's network with and without the bias before BN, with the
    same weights and a large random bias (std 3), runs one batch of 60 random
    inputs through both and back-propagates the loss of the one with a bias.
    Returns the largest output gap and the largest |dL/db| and |dL/dW|.
    The global RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with_bias = bt.build_network(cfg).double()
        no_bias = bt.build_network(cfg.replace(bias_before_bn=False)).double()
        no_bias.load_state_dict({k: v for k, v in with_bias.state_dict().items() if k in no_bias.state_dict()})
        with torch.no_grad():
            for lin, _, _ in bt.hidden_blocks(with_bias):
                with_bias[lin].bias.normal_(0.0, 3.0)
        xb = torch.randn(60, 1, 28, 28, dtype=torch.float64)
        yb = torch.randint(0, 10, (60,))
    out_bias, out_nobias = with_bias(xb), no_bias(xb)
    torch.nn.functional.cross_entropy(out_bias, yb).backward()
    blocks = bt.hidden_blocks(with_bias)
    return {"max_out_gap": (out_bias - out_nobias).abs().max().item(),
            "max_bias_grad": max(with_bias[lin].bias.grad.abs().max().item() for lin, _, _ in blocks),
            "max_weight_grad": max(with_bias[lin].weight.grad.abs().max().item() for lin, _, _ in blocks)}


def quantities(results: dict[str, Result], profile: str) -> dict:
    """Every number the claims read (and the chapter's prose quotes), from the stored runs.

    Speed-ups are ratios of mean steps to the target X over seeds; a run that
    never reaches X counts with its budget (a lower bound), and a ratio whose
    faster arm misses X in some seed is NaN (not reproduced).
    """
    groups = bt.groups(profile)
    base = groups["lr"][0]
    target = TARGET_ACC[base.dataset]
    q: dict = {"target": target, "dataset": base.dataset, "steps": base.steps}

    # Figure 1: lr x1, BN vs no BN
    lr_runs = runs_table(results, groups["lr"], target)
    per_arm = fig1_per_arm(lr_runs[lr_runs.lr_mult == 1])
    bn1, plain1 = per_arm.loc["BN"], per_arm.loc["no BN"]
    q.update(fig1_bn_acc=float(bn1.final_acc), fig1_plain_acc=float(plain1.final_acc),
             fig1_bn_steps=float(bn1.steps_to_target), fig1_plain_steps=float(plain1.steps_to_target),
             fig1_bn_all_reached=bool(bn1.all_reached), fig1_plain_all_reached=bool(plain1.all_reached),
             fig1_bn_drift=float(bn1.drift), fig1_plain_drift=float(plain1.drift),
             fig1_speedup=ratio(plain1.steps_to_target, bn1.steps_to_target) if bn1.all_reached else math.nan,
             fig1_acc_gap=float(bn1.final_acc - plain1.final_acc),
             drift_ratio=ratio(plain1.drift, bn1.drift))

    # Table 2's learning-rate multipliers, with BN
    lr_mean = lr_runs.groupby(["norm", "lr_mult"]).agg(steps=("steps_to_target", "mean"),
                                                       all_reached=("reached", "all"),
                                                       final=("final_acc", "mean"))

    def steps_of(norm, mult):
        row = lr_mean.loc[(norm, mult)]
        return float(row.steps), bool(row.all_reached)

    bn_x1, _ = steps_of("bn", 1.0)
    bn_x5, bn_x5_ok = steps_of("bn", 5.0)
    bn_x30, bn_x30_ok = steps_of("bn", 30.0)
    q.update(bn_x1_steps=bn_x1, bn_x5_steps=bn_x5, bn_x30_steps=bn_x30,
             x5_speedup=ratio(bn_x1, bn_x5) if bn_x5_ok else math.nan,
             x30_speedup=ratio(bn_x1, bn_x30) if bn_x30_ok else math.nan,
             x30_vs_x5=ratio(bn_x30, bn_x5) if (bn_x30_ok and bn_x5_ok) else math.nan,
             x30_minus_x5=float(lr_mean.loc[("bn", 30.0), "final"] - lr_mean.loc[("bn", 5.0), "final"]))

    def plain_fails_bn_trains(mult):
        """Fraction of seeds where, at this multiplier, no-BN misses X and BN reaches it."""
        by_seed = lr_runs[lr_runs.lr_mult == mult].pivot_table(index="seed", columns="norm", values="reached")
        return float(((~by_seed["none"].astype(bool)) & by_seed["bn"].astype(bool)).mean())

    q.update(x5_fail_frac=plain_fails_bn_trains(5.0), x30_fail_frac=plain_fails_bn_trains(30.0))

    # deep sigmoid networks
    deep = runs_table(results, groups["deep"], target)
    q.update(deep_steps=groups["deep"][0].steps,
             deep_plain_best=float(deep[deep.norm == "none"].final_acc.max()),
             deep_bn_x5=float(deep[(deep.norm == "bn") & (deep.lr_mult == 5)].final_acc.mean()))

    # d2l's exercises, each against the Figure 1 BN run of seed 0 (lr x1)
    def final(cfg):
        return _nan_if_none(results[cfg.hash()]["final_test_acc"])

    bn_ref = next(c for c in groups["lr"] if c.norm == "bn" and c.lr_mult == 1 and c.seed == 0)
    ablation = dict(zip(bt.ABLATIONS, groups["ablations"]))
    q.update(bias_gap_final=abs(final(bn_ref) - final(ablation["no bias before BN"])),
             remove_dropout_gain=final(bn_ref) - final(ablation["BN + dropout 0.2"]))
    return q


def score(results: dict[str, Result], profile: str) -> list[Claim]:
    """The chapter's claims (:func:`quantities` and :func:`bias_gradient_check` scored by
    rules fixed before the runs). ``results``: :func:`load`'s dict."""
    base = bt.groups(profile)["lr"][0]
    q = quantities(results, profile)
    check = bias_gradient_check(base)
    target = q["target"]
    device = next(iter(results.values())).provenance.get("device", "?")
    scale = (f"{profile} profile, {base.dataset}, {base.steps:,} steps, "
             f"{len(bt.SEEDS[profile])} seed(s), {device}")
    deep_steps = f"{q['deep_steps']:,} steps"
    return [
        Claim("bn-fewer-steps", f"{IS}, Fig. 1a / Table 2",
              f"BN reaches the target accuracy in fewer steps (no-BN steps / BN steps to X={target})",
              "31.0M / 13.3M = 2.3", q["fig1_speedup"], at_least(2.0, 0.9), scale, "{:.2f}"),
        Claim("bn-higher-accuracy", f"{IS}, Fig. 1a / Table 2",
              "BN network ends with higher test accuracy (BN - no BN)",
              "higher; BN-Baseline 72.7% vs 72.2% (+0.5)", q["fig1_acc_gap"], at_least(0.005, 0.005),
              scale, "{:+.4f}"),
        Claim("bn-stable-inputs", f"{IS}, Fig. 1b, c",
              "sigmoid-input distribution more stable with BN (drift no BN / drift BN)",
              "much more stable", q["drift_ratio"], at_least(2.0, 0.9), scale, "{:.2f}"),
        Claim("bn-x5-faster", f"{IS}, Table 2", "BN-x5 reaches the target faster than BN-x1 (steps x1 / x5)",
              "13.3M / 2.1M = 6.3", q["x5_speedup"], at_least(2.0, 0.9), scale, "{:.2f}"),
        Claim("bn-x30-faster", f"{IS}, Table 2", "BN-x30 reaches the target faster than BN-x1 (steps x1 / x30)",
              "13.3M / 2.7M = 4.9", q["x30_speedup"], at_least(2.0, 0.9), scale, "{:.2f}"),
        Claim("bn-x30-slower-than-x5", f"{IS}, Table 2", "BN-x30 needs more steps than BN-x5 (steps x30 / x5)",
              "2.7M / 2.1M = 1.3", q["x30_vs_x5"], at_least(1.1, 0.1), scale, "{:.2f}"),
        Claim("bn-x30-ends-higher", f"{IS}, Table 2",
              "BN-x30 ends at least as high as BN-x5 (final acc x30 - x5)",
              "74.8% - 73.0% = +1.8", q["x30_minus_x5"], at_least(0.0, 0.005), scale, "{:+.4f}"),
        Claim("no-bn-fails-at-x5", f"{IS}, Sec. 4.2.2",
              "at x5 the network without BN fails to reach X while BN reaches it (fraction of seeds)",
              "Inception at x5: parameters reach machine infinity", q["x5_fail_frac"],
              at_least(1.0, 0.5), scale, "{:.2f}"),
        Claim("no-bn-fails-at-x30", f"{IS}, Sec. 3.3 (extended to x30)",
              "at x30 the network without BN fails to reach X while BN reaches it (fraction of seeds)",
              "not run (x5 already failed)", q["x30_fail_frac"], at_least(1.0, 0.5), scale, "{:.2f}"),
        Claim("sigmoid-without-bn-fails", f"{IS}, Sec. 4.2.2",
              f"deep sigmoid net without BN does not train (best final acc; {bt.DEEP_DEPTH} layers, "
              f"{deep_steps})",
              "never > 1/1000 (chance)", q["deep_plain_best"], at_most(0.15, 0.10), scale, "{:.3f}"),
        Claim("sigmoid-with-bn-trains", f"{IS}, Table 2",
              f"deep sigmoid net with BN-x5 trains (final acc / X; {deep_steps})",
              "69.8 / 72.2 = 0.967", ratio(q["deep_bn_x5"], target), at_least(0.95, 0.10), scale, "{:.3f}"),
        Claim("bias-gradient-zero", f"{IS}, Sec. 3.2", "gradient of the bias before BN (max |dL/db|, float64)",
              "0 (b can be ignored)", check["max_bias_grad"], at_most(1e-12), "exact check, float64", "{:.1e}"),
        Claim("bias-redundant", "d2l exercise / I&S Sec. 3.2",
              "with vs without the bias before BN: |final test acc difference|", "0 (redundant)",
              float(q["bias_gap_final"]), at_most(0.005, 0.005), scale, "{:.4f}"),
        Claim("bn-remove-dropout", f"{IS}, Sec. 4.2.1",
              "removing dropout from the BN net does not hurt (final acc BN - BN+dropout)",
              "no loss in accuracy", q["remove_dropout_gain"], at_least(-0.005, 0.01), scale, "{:+.4f}"),
    ]


def claims(profile: str, device=None) -> list[Claim]:
    """The scorecard's entry point: load the chapter's runs quietly and score them."""
    return score(load(profile, device, verbose=False), profile)
