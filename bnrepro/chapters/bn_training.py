"""The chapter "BN in training (Ioffe & Szegedy)": its runs, tables and scored claims.

``book/bn_training.ipynb`` reads the ``bn_training`` runs of
:func:`bnrepro.experiments.bn_training.groups` (Figure 1, deep sigmoid
networks, Table 2's learning rates on a small ReLU VGG, d2l's exercises).
This module loads them (:func:`load`), turns them into the chapter's tables
and per-seed numbers (:func:`runs_table`, :func:`quantities`) and scores them
(:func:`score`) by the rules registered with the experiment
(:data:`bnrepro.experiments.bn_training.CLAIMS`, fixed before the runs);
:func:`claims` is the scorecard's entry point, so the chapter and the
scorecard can never disagree.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import torch

from ..core.claims import Claim
from ..core.store import Result
from ..experiments import bn_training as bt
from ..experiments.bn_training import CLAIMS, NO_LEARNING_ACC, PLATEAU_MARGIN, TARGET_ACC, VGG_TARGET_ACC
from ..runner import load_or_run

__all__ = ["SPECS", "ARM", "TARGET_ACC", "VGG_TARGET_ACC", "NO_LEARNING_ACC", "PLATEAU_MARGIN", "load",
           "claims", "score", "quantities", "runs_table", "steps_to_reach", "outcome", "median_drift",
           "plateau", "bias_gradient_check", "ratio", "scale_of"]

#: Every claim the chapter scores, in its table's order.
SPECS = tuple(CLAIMS.values())

#: How the chapter names the two arms.
ARM = {"bn": "BN", "none": "no BN"}


def steps_to_reach(evals: Sequence[dict], target: float) -> int | None:
    """The first evaluated step whose test accuracy is >= ``target`` (None: never)."""
    for e in evals:
        if e.get("test_acc") is not None and e["test_acc"] >= target:
            return int(e["step"])
    return None


def plateau(evals: Sequence[dict], tail: float = 0.2) -> float:
    """The level a run settles at: mean test accuracy over the last ``tail`` of its evaluations."""
    accs = [e["test_acc"] for e in evals if e.get("test_acc") is not None]
    if not accs:
        return math.nan
    k = max(1, round(tail * len(accs)))
    return statistics.fmean(accs[-k:])


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
    num = math.nan if num is None else float(num)
    den = math.nan if den is None else float(den)
    return num / den if den and math.isfinite(den) and math.isfinite(num) else math.nan


def _nan_if_none(x) -> float:
    return math.nan if x is None else float(x)


def target_of(cfg) -> float:
    """The target accuracy X of a run: the VGG's or the MLPs', per dataset."""
    return (VGG_TARGET_ACC if cfg.model == "vgg" else TARGET_ACC)[cfg.dataset]


def summary_row(cfg, res: Result) -> dict:
    """One run's numbers: final/best accuracy, plateau, steps to its X (censored at the budget), outcome,
    drift."""
    d = res.data
    target = target_of(cfg)
    evals = d["history"]["evals"]
    reached = steps_to_reach(evals, target)
    return {"hash": cfg.hash(), "model": cfg.model, "norm": cfg.norm, "arm": ARM.get(cfg.norm, cfg.norm),
            "lr_mult": cfg.lr_mult, "lr": cfg.effective_lr, "depth": cfg.depth, "init": cfg.init,
            "init_std": cfg.init_std, "seed": cfg.seed, "budget": cfg.steps, "target": target,
            "final_acc": _nan_if_none(d["final_test_acc"]), "best_acc": _nan_if_none(d["best_test_acc"]),
            "plateau": plateau(evals) if not d["history"]["diverged"] else math.nan,
            "reached": reached is not None,
            "steps_to_target": reached if reached is not None else cfg.steps,  # censored at the budget
            "outcome": outcome(d, target), "drift": median_drift(d["probe"]),
            "diverged_at": d["history"]["diverged_at_step"],
            "wall_s": res.provenance.get("wall_time_s", math.nan)}


def runs_table(results: dict[str, Result], cfgs: Sequence):
    """A pandas DataFrame, one :func:`summary_row` per config (in the given order)."""
    import pandas as pd

    return pd.DataFrame([summary_row(c, results[c.hash()]) for c in cfgs])


def fig1_per_arm(fig1):
    """Figure 1's runs (every seed) per arm: mean final accuracy, steps to X, drift."""
    return fig1.groupby("arm").agg(runs=("seed", "count"), final_acc=("final_acc", "mean"),
                                   plateau=("plateau", "mean"), steps_to_target=("steps_to_target", "mean"),
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


def _by_seed(table, **where) -> dict[int, dict]:
    """The rows of ``table`` matching ``where``, by seed."""
    rows = table
    for k, v in where.items():
        rows = rows[rows[k] == v]
    return {int(r.seed): r for r in rows.itertuples()}


def _paired(a: dict, b: dict, f) -> list[float]:
    """``f(a[s], b[s])`` for every seed both have, in seed order."""
    return [float(f(a[s], b[s])) for s in sorted(set(a) & set(b))]


def _above_plateau(*arms: dict) -> bool:
    """Whether every run of the compared arms settles at least PLATEAU_MARGIN above its target X."""
    return all(math.isfinite(r.plateau) and r.plateau >= r.target + PLATEAU_MARGIN
               for arm in arms for r in arm.values())


def _steps_ratio(num: dict, den: dict) -> list[float]:
    """Per-seed steps-to-X ratios num/den; all NaN (inconclusive) when some run's plateau is not above X."""
    values = _paired(num, den, lambda a, b: ratio(a.steps_to_target, b.steps_to_target))
    return values if _above_plateau(num, den) else [math.nan] * len(values)


def quantities(results: dict[str, Result], profile: str) -> dict:
    """Every per-seed list the claims score (and numbers the chapter's prose quotes), from the stored runs.

    Values are paired by seed (the same seed's initialisation and data order in both arms).
    A "steps to reach X" ratio is NaN for every seed, hence inconclusive, unless every run of
    the arms it compares settles at least :data:`PLATEAU_MARGIN` above X (``*_plateau_ok``).
    """
    g = bt.groups(profile)
    tables = {name: runs_table(results, cfgs) for name, cfgs in g.items()}
    q: dict = {"tables": tables, "dataset": g["fig1"][0].dataset, "target": target_of(g["fig1"][0]),
               "vgg_target": target_of(g["vgg_lr"][0])}

    fig1 = tables["fig1"]
    bn, plain = _by_seed(fig1, norm="bn"), _by_seed(fig1, norm="none")
    q["fig1_plateau_ok"] = _above_plateau(bn, plain)
    q["bn-fewer-steps"] = _steps_ratio(plain, bn)
    q["bn-higher-accuracy"] = _paired(bn, plain, lambda a, b: a.final_acc - b.final_acc)
    q["bn-stable-inputs"] = _paired(plain, bn, lambda a, b: ratio(a.drift, b.drift))

    deep = tables["deep"]
    plain_x1, plain_x5 = _by_seed(deep, norm="none", lr_mult=1.0), _by_seed(deep, norm="none", lr_mult=5.0)
    bn_x1, bn_x5 = _by_seed(deep, norm="bn", lr_mult=1.0), _by_seed(deep, norm="bn", lr_mult=5.0)
    q["sigmoid-without-bn-fails"] = _paired(plain_x1, plain_x5, lambda a, b: max(
        0.0 if math.isnan(a.final_acc) else a.final_acc, 0.0 if math.isnan(b.final_acc) else b.final_acc))
    q["sigmoid-with-bn-trains"] = [ratio(r.final_acc, r.target) for _, r in sorted(bn_x5.items())]
    tiny_bn = _by_seed(tables["deep_tiny"], norm="bn")
    q["bn-less-careful-init"] = _paired(tiny_bn, bn_x1, lambda a, b: a.final_acc - b.final_acc)

    vgg = tables["vgg_lr"]
    v = {m: _by_seed(vgg, norm="bn", lr_mult=m) for m in bt.LR_MULTS}
    q["vgg_plateau_ok"] = _above_plateau(*v.values())
    q["bn-x5-faster"] = _steps_ratio(v[1.0], v[5.0])
    q["bn-x30-faster"] = _steps_ratio(v[1.0], v[30.0])
    q["bn-x30-slower-than-x5"] = _steps_ratio(v[30.0], v[5.0])
    q["bn-x30-ends-higher"] = _paired(v[30.0], v[5.0], lambda a, b: a.final_acc - b.final_acc)
    plain_vgg_x5 = _by_seed(vgg, norm="none", lr_mult=5.0)
    q["no-bn-fails-at-x5"] = [float(r.outcome in ("diverged", "no learning"))
                              for _, r in sorted(plain_vgg_x5.items())]

    abl = tables["ablations"]
    abl = abl.assign(variant=[name for name, _ in bt.ablation_runs(profile)])
    no_bias = _by_seed(abl, variant="no bias before BN")
    with_dropout = _by_seed(abl, variant="BN + dropout 0.2")
    q["ablation_table"] = abl
    q["bias-redundant"] = _paired(bn, no_bias, lambda a, b: abs(a.final_acc - b.final_acc))
    q["bn-remove-dropout"] = _paired(bn, with_dropout, lambda a, b: a.final_acc - b.final_acc)
    return q


def scale_of(cfgs: Sequence, device: str) -> str:
    """What a claim was measured on, from its runs' configs: data, steps, seeds, device."""
    c = cfgs[0]
    data = c.dataset if c.n_train is None else f"{c.dataset} ({c.n_train:,} training images)"
    net = (f"VGG ({bt.VGG_LAYOUT})" if c.model == "vgg"
           else f"{c.depth}x{c.width} sigmoid MLP")
    steps = sorted({x.steps for x in cfgs})
    seeds = sorted({x.seed for x in cfgs})
    return (f"{net}, {data}, {'/'.join(f'{s:,}' for s in steps)} steps, "
            f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}, {device.split(' (')[0]}")


def score(results: dict[str, Result], profile: str) -> list[Claim]:
    """The chapter's claims: :func:`quantities` and :func:`bias_gradient_check` scored by :data:`SPECS`.
    ``results``: :func:`load`'s dict."""
    g = bt.groups(profile)
    q = quantities(results, profile)
    device = next(iter(results.values())).provenance.get("device", "?")
    fig1, deep, vgg = g["fig1"], g["deep"], g["vgg_lr"]
    scored = [c for (name, _), c in zip(bt.ablation_runs(profile), g["ablations"])
              if name in bt.SCORED_ABLATIONS]
    scales = {"bn-fewer-steps": fig1, "bn-higher-accuracy": fig1, "bn-stable-inputs": fig1,
              "sigmoid-without-bn-fails": deep, "sigmoid-with-bn-trains": deep,
              "bn-less-careful-init": deep + g["deep_tiny"],
              "bn-x5-faster": vgg, "bn-x30-faster": vgg, "bn-x30-slower-than-x5": vgg,
              "bn-x30-ends-higher": vgg, "no-bn-fails-at-x5": vgg,
              "bias-redundant": scored, "bn-remove-dropout": scored}
    check = bias_gradient_check(fig1[0])
    out = []
    for spec in SPECS:
        if spec.id == "bias-gradient-zero":
            out.append(spec.score([check["max_bias_grad"]], "exact, float64, one batch of 60"))
        else:
            out.append(spec.score(q[spec.id], f"{profile} profile, {scale_of(scales[spec.id], device)}"))
    return out


def claims(profile: str, device=None) -> list[Claim]:
    """The scorecard's entry point: load the chapter's runs quietly and score them."""
    return score(load(profile, device, verbose=False), profile)


#: The chapter's verdicts under the old scoring (a point estimate against a threshold, 1-2 seeds; commit
#: e67c832 scored on the results stored then), for the "what changed" table. None: not scored then.
OLD_VERDICTS = {
    "bn-fewer-steps": ("partly", "1.89"), "bn-higher-accuracy": ("reproduced", "+0.0166"),
    "bn-stable-inputs": ("partly", "1.77"), "sigmoid-without-bn-fails": ("reproduced", "0.100"),
    "sigmoid-with-bn-trains": ("reproduced", "0.984"), "bn-less-careful-init": None,
    "bn-x5-faster": ("partly", "1.81"), "bn-x30-faster": ("partly", "1.73"),
    "bn-x30-slower-than-x5": ("partly", "1.05"), "bn-x30-ends-higher": ("partly", "-0.0015"),
    "no-bn-fails-at-x5": ("not reproduced", "0.00"), "no-bn-fails-at-x30": ("reproduced", "1.00"),
    "bias-gradient-zero": ("reproduced", "2.2e-15"), "bias-redundant": ("reproduced", "0.0000"),
    "bn-remove-dropout": ("reproduced", "+0.0049"),
}


def verdict_changes(claims: Sequence[Claim]):
    """One row per claim, old and new: verdict and value under the old scoring, verdict, mean and n now."""
    import pandas as pd

    now = {c.id: c for c in claims}
    rows = []
    for cid in list(now) + [i for i in OLD_VERDICTS if i not in now]:
        old = OLD_VERDICTS.get(cid)
        c = now.get(cid)
        row = c.row() if c else None
        rows.append({"claim": cid, "old verdict": old[0] if old else "not scored",
                     "old value": old[1] if old else "",
                     "new verdict": c.verdict if c else "not a claim of the paper (kept in the text)",
                     "new mean": row["ours"] if c else "", "n": str(c.n) if c else ""})
    return pd.DataFrame(rows).set_index("claim")
