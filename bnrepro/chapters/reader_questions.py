"""The page "Questions readers ask": each question answered by a run of its own or by the scored
rows of the chapters that settle it.

Its own runs are the ``reader_questions`` experiment (:mod:`bnrepro.experiments.reader_questions`):
ReLU MLPs of one and six hidden layers with BN, with BN's affine parameters and no normalization,
or with neither, each on a learning-rate grid. This module loads them (:func:`load`), picks each
arm's best learning rate (:func:`best_lrs`), scores the registered claims (:func:`score`) and one
live check (BN folds into the layer before it at inference, :func:`fold_deviation`), and gathers
the other chapters' rows that answer the other questions (:data:`QUESTIONS`, :func:`evidence`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.claims import CHECK, Claim, ClaimSpec, at_most
from ..core.store import Result
from ..experiments.reader_questions import CLAIMS, LRS, question_mlp, sweep
from ..nn.functional import eval_scale_shift
from ..runner import load_groups

FOLD_CHECK = ClaimSpec(
    "bn-folds-into-linear", CHECK,
    "At inference BN is an affine map that folds into the Linear before it: largest output difference "
    "between a trained BN MLP in eval mode and the same MLP with every BN folded into its Linear",
    "", at_most(1e-4), "float32 rounding of a product of two affine maps", fmt="{:.1e}")
#: Every claim the page scores, in its table's order.
SPECS = (*CLAIMS.values(), FOLD_CHECK)
NAMES = {"bn": "BN", "affine": "γ, β without normalization", "none": "no normalization"}

#: The questions, in the lecture notes' order, and the scored rows (claim ids) that answer each.
QUESTIONS = {
    "init": ("How does BN differ from normalizing the initialisation (Xavier, He)?",
             ("q-init-scale-drifts", "bn-less-careful-init", "sigmoid-without-bn-fails")),
    "weight_decay": ("Does BN act like weight decay?",
                     ("q-bn-weights-grow", "scale-invariance-output", "gradient-scales-1/a", "effective-lr-falls")),
    "mlp": ("Does BN work in MLPs, and why does it seem to hurt shallow ones?",
            ("q-bn-hurts-shallow-mlp", "q-bn-helps-deep-mlp")),
    "linear": ("How does BN differ from adding a linear layer?", ("q-bn-is-not-its-affine", "bn-folds-into-linear")),
    "convergence": ("Why does BN shorten convergence?",
                    ("bn-reaches-target-sooner", "bn-fewer-steps", "smoother-loss", "predictive-gradient", "ics-vgg")),
    "fair": ("What may differ in a fair comparison: batch size, learning rate, framework, epochs?",
             ("bn-same-final-accuracy", "small-batch-lr-similar", "bn-lr-ratio-grows", "pytorch-0.1-is-keras-0.9")),
    "layernorm": ("LayerNorm vs BN?", ("gn-beats-layernorm", "gn-comparable-to-bn")),
    "after": ("Can BN go after the activation?", ("bn-before-sigmoid-less-saturated",)),
    "instancenorm": ("InstanceNorm vs BN?", ("gn-beats-instancenorm",)),
    "batch": ("How should one choose the batch size?",
              ("bn-error-rises-at-small-batch", "bn-batch-stats-inaccurate-at-batch-2", "gn-beats-bn-at-batch-2",
               "bn-advantage-grows", "ghost-bn-regularizes")),
}


def load(profile: str, device=None, verbose: bool = True) -> list[Result]:
    """Every run of the page's sweep, from the store (run if missing)."""
    return load_groups({"all": sweep(profile)}, device=device, verbose=verbose)["all"]


def runs_frame(results: list[Result]):
    """One row per run: depth, norm, lr, seed, final test accuracy, whether it diverged (a DataFrame)."""
    import pandas as pd

    return pd.DataFrame([{**{k: r.config[k] for k in ("depth", "norm", "lr", "seed")},
                          "test_acc": r.data.test_acc, "diverged": r.data.history.diverged} for r in results])


def best_lrs(results: list[Result], profile: str) -> dict[tuple[int, str], dict]:
    """Per (depth, norm): the lr with the highest mean test accuracy, whether it is at the grid's
    edge, and that lr's test accuracy per seed."""
    df = runs_frame(results)
    grid = LRS[profile]
    out = {}
    for (depth, norm), sel in df.groupby(["depth", "norm"]):
        means = sel.groupby("lr")["test_acc"].mean()
        lr = float(means.idxmax())
        at = sel[sel["lr"] == lr]
        out[(int(depth), norm)] = {"lr": lr, "edge": lr in (min(grid), max(grid)),
                                   "acc": dict(zip(at["seed"], at["test_acc"]))}
    return out


def _gap(best: dict, depth: int, a: str, b: str) -> list[float]:
    """Paired by seed: arm a minus arm b at their best lrs; nothing if either best lr is at an edge."""
    x, y = best[(depth, a)], best[(depth, b)]
    if x["edge"] or y["edge"]:
        return []
    return [x["acc"][s] - y["acc"][s] for s in sorted(x["acc"]) if s in y["acc"]]


def drift(results: list[Result], best: dict, depth: int = 6) -> list[float]:
    """|log2(std after / std at init)| of the last hidden layer's pre-activations, no normalization,
    at its best lr, per seed."""
    lr = best[(depth, "none")]["lr"]
    return [abs(math.log2(r.data.std_end[-1] / r.data.std_init[-1])) for r in results
            if r.config["depth"] == depth and r.config["norm"] == "none" and r.config["lr"] == lr]


def weight_growth(results: list[Result]) -> list[float]:
    """Per BN run: the smallest ratio, over its hidden layers, of the weight norm after training to at init."""
    return [min(e / i for e, i in zip(r.data.wnorm_end, r.data.wnorm_init)) for r in results
            if r.config["norm"] == "bn"]


@torch.no_grad()
def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` (eval mode) with every BatchNorm1d folded into the Linear before it:
    W' = diag(scale) W, b' = scale b + shift, with BN's inference map y = scale x + shift
    (:func:`bnrepro.nn.functional.eval_scale_shift`)."""
    layers = []
    for m in model:
        if isinstance(m, nn.BatchNorm1d):
            lin = layers.pop()
            scale, shift = eval_scale_shift(m.running_mean, m.running_var, m.weight, m.bias, m.eps)
            fused = nn.Linear(lin.in_features, lin.out_features)
            fused.weight.copy_(lin.weight * scale[:, None])
            fused.bias.copy_(lin.bias * scale + shift)
            layers.append(fused)
        else:
            layers.append(m)
    return nn.Sequential(*layers).eval()


def fold_deviation(seed: int = 0, steps: int = 30) -> float:
    """Train a small BN MLP for ``steps`` SGD steps on random data (so γ, β and the running
    statistics move away from their defaults), then compare it in eval mode with its folded copy."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = question_mlp(3, 32, "bn", in_features=20)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x, y = torch.randn(64, 20, generator=gen) * 3 + 1, torch.randint(0, 10, (64,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    x = torch.randn(256, 20, generator=gen) * 3 + 1
    with torch.no_grad():
        return float((model(x) - fold_batchnorm(model)(x)).abs().max())


def score(results: list[Result], profile: str) -> list[Claim]:
    """The page's claims from its runs, by the rules of :data:`SPECS`."""
    best = best_lrs(results, profile)
    first = results[0].config
    seeds = len({r.config["seed"] for r in results})
    where = (f"{profile} profile, {first['dataset']} ({first['n_train']} train images), ReLU MLP of width "
             f"{first['width']}, plain SGD, batch {first['batch_size']}, {first['epochs']} epochs, best lr of "
             f"{', '.join(f'{lr:g}' for lr in LRS[profile])} per arm, {seeds} seeds")
    c = CLAIMS
    return [
        c["q-bn-hurts-shallow-mlp"].score(_gap(best, 1, "bn", "none"), f"{where}; 1 hidden layer"),
        c["q-bn-helps-deep-mlp"].score(_gap(best, 6, "bn", "none"), f"{where}; 6 hidden layers"),
        c["q-bn-is-not-its-affine"].score(_gap(best, 6, "bn", "affine"), f"{where}; 6 hidden layers"),
        c["q-init-scale-drifts"].score(drift(results, best), f"{where}; 6 hidden layers, no normalization"),
        c["q-bn-weights-grow"].score(weight_growth(results), f"{where}; every BN run (both depths, every lr)"),
        FOLD_CHECK.score([fold_deviation(s) for s in range(3)], "an MLP of 3 hidden layers of 32 units, "
                         "30 SGD steps on random inputs, 3 seeds"),
    ]


def claims(profile: str, device=None) -> list[Claim]:
    """The page's own claims at ``profile``, from the stored runs (run if missing)."""
    return score(load(profile, device, verbose=False), profile)


def cited_chapters(spec_ids: dict[str, set[str]]) -> list[str]:
    """Of ``spec_ids`` (chapter module -> the ids of its SPECS, in book order), the other chapters
    whose rows :data:`QUESTIONS` cite: the page scores only those, beside its own claims."""
    cited = {cid for _, ids in QUESTIONS.values() for cid in ids}
    own = __name__.rsplit(".", 1)[-1]
    return [m for m, ids in spec_ids.items() if m != own and cited & set(ids)]


def evidence(table, question: str):
    """The rows of a scorecard ``table`` (:func:`bnrepro.scorecard.collect`) that answer ``question``,
    in the order :data:`QUESTIONS` lists them."""
    ids = QUESTIONS[question][1]
    rows = {r["claim"]: r for r in table.to_dict("records")}
    return [rows[i] for i in ids if i in rows]
