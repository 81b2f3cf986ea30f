"""Two ideas the BN-only blog lists for later, tried at the chapter's scale.

The blog that repeated Frankle, Schwab & Morcos's BN-only experiment
(``seed_bnonly_blog``) ends with ideas it did not try, among them unfreezing
the shortcut convolutions and initialising gamma at zero. This experiment runs
them as two more arms of :mod:`bnrepro.experiments.bn_only`, with the same
``run`` and the same recipe, at the chapter's base depth and seeds:

* ``trainable="bn_shortcut"``: BN's gamma and beta plus the 1x1 projection
  shortcut convolutions (:func:`bnrepro.nn.freeze.train_bn_and_shortcuts`);
* ``bn_init="zero_residual"``: BN-only from gamma = 0 in the last BN of every
  residual branch, the other gammas U[0, 1] as in the baseline (the same draw).

Gamma = 0 in *every* BN (``bn_init="zero"``) is not run: with beta = 0 every
BN outputs 0 and every ReLU receives exactly 0, where its gradient is 0, so no
BN parameter ever gets a gradient and the network stays at its initial
constant output. :func:`zero_gamma_gradients` measures that (the chapter shows
it as a check); with ``"zero_residual"`` the zeroed gammas do get gradient,
because the signal still reaches the end of every branch through the shortcut.

The baseline is not re-run: it is the stored BN-only runs of ``bn_only``
(gamma ~ U[0, 1]) whose configs are identical field by field
(:func:`baseline_configs`); the configs here differ from them only in
``trainable`` or ``bn_init`` (and in the experiment name, so in the hash).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..core.claims import EMPIRICAL, ClaimSpec, at_least, register_claims
from ..nn.freeze import apply_freezing, batchnorm_layers, init_batchnorm, residual_bn_names
from . import register
from .bn_only import PLAN, BNOnlyConfig
from .bn_only import run as _run_bn_only


@dataclasses.dataclass(frozen=True)
class BNOnlyExtrasConfig(BNOnlyConfig):
    """A :class:`~bnrepro.experiments.bn_only.BNOnlyConfig` stored under its own experiment name."""

    experiment = "bn_only_extras"


#: The two arms: (trainable, bn_init), each against the baseline ("bn", "uniform").
ARMS = {"shortcut": ("bn_shortcut", "uniform"), "zero_residual": ("bn", "zero_residual")}
BASELINE = ("bn", "uniform")


def run(cfg: BNOnlyExtrasConfig, device=None):
    """Train BN-only with the shortcut convolutions unfrozen, or from zero gamma at every branch's end."""
    return _run_bn_only(cfg, device=device)


def _points(profile: str) -> tuple[BNOnlyConfig, tuple[int, ...]]:
    """The base config (bn_only's, at its base depth) and the seeds of bn_only's BN-only arm."""
    plan = PLAN[profile]
    base = BNOnlyConfig.for_profile(profile, depth=plan["base_depth"])
    seeds = plan["more_seeds"] if "bn" in plan["more_seed_arms"] else plan["seeds"]
    return base, tuple(seeds)


def baseline_configs(profile: str) -> list[BNOnlyConfig]:
    """The stored ``bn_only`` BN-only runs (gamma ~ U[0, 1]) the arms are paired with, seed by seed."""
    base, seeds = _points(profile)
    return [base.replace(trainable=BASELINE[0], bn_init=BASELINE[1], seed=s) for s in seeds]


def sweep_groups(profile: str) -> dict[str, list[BNOnlyExtrasConfig]]:
    """Each arm's configs: bn_only's base config and seeds, with only ``trainable``/``bn_init`` changed."""
    base, seeds = _points(profile)
    fields = base.to_dict()
    return {arm: [BNOnlyExtrasConfig(**{**fields, "trainable": t, "bn_init": i, "seed": s}) for s in seeds]
            for arm, (t, i) in ARMS.items()}


def sweep(profile: str) -> list[BNOnlyExtrasConfig]:
    """Every config of :func:`sweep_groups`, seed by seed (so an interrupted sweep has pairs)."""
    groups = sweep_groups(profile)
    return [cfg for pair in zip(*groups.values()) for cfg in pair]


register(BNOnlyExtrasConfig, run, sweep, data_parallel=True)


# --------------------------------------------------------------------------- the zero-gamma check
def zero_gamma_gradients(model, x: torch.Tensor, y: torch.Tensor, bn_init: str, seed: int = 0) -> dict:
    """BN-only gradients at initialisation from ``bn_init`` on one batch (training mode).

    Returns the largest |gradient| over every gamma and beta, and the smallest
    gradient norm of the gammas ``"zero_residual"`` zeroes (``None`` where the
    model has no residual branches).
    """
    init_batchnorm(model, bn_init, seed=seed)
    apply_freezing(model, "bn", seed=seed)
    model.train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad for _, m in batchnorm_layers(model) for p in (m.weight, m.bias)]
    largest = max(float(g.abs().max()) if g is not None else 0.0 for g in grads)
    try:
        ends = residual_bn_names(model)
    except ValueError:
        ends = ()
    modules = dict(model.named_modules())
    branch = [float(modules[n].weight.grad.norm()) if modules[n].weight.grad is not None else 0.0 for n in ends]
    return {"max_abs_grad": largest, "min_branch_gamma_grad_norm": min(branch) if branch else None}


# --------------------------------------------------------------------------- claims
#: Fixed before the runs. Both ideas are questions the blog raised without results: the rules say
#: what the paper's account predicts (shortcuts) or ask only "no worse" (zero gamma).
_BLOG = "seed_bnonly_blog"
_BLOG_WHERE = "What If Only Batch Normalization Layers Were Trained?, ideas for further work"
CLAIMS = register_claims("bn_only_extras", [
    ClaimSpec("shortcut-unfrozen-helps", EMPIRICAL, "BN + the 1×1 shortcut convolutions trained minus BN only "
              "(γ ~ U[0, 1]), test accuracy, same seed", "an idea to try (no result given)",
              at_least(0.0), "a question the blog raised; the paper's account (accuracy grows with the trainable "
              "scalars placed where the features form) predicts a gain, so any gain counts", source=_BLOG,
              where=_BLOG_WHERE),
    ClaimSpec("zero-gamma-no-worse", EMPIRICAL, "BN-only from γ = 0 at the end of every residual branch (the "
              "other γ ~ U[0, 1]) minus BN-only from γ ~ U[0, 1], test accuracy, same seed",
              "an idea to try (no result given)", at_least(-0.02),
              "a question the blog raised, with no predicted direction: scored as 'no worse', at most 2 "
              "points below open_lth's initialiser", source=_BLOG, where=_BLOG_WHERE),
])
