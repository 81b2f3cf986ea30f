"""Simulations for the SkipInit chapter: explicit random residual networks at initialisation.

Two measurements check the exact theory of :mod:`bnrepro.measure.path_depth`:

* :func:`path_variance_mc` -- a deep *linear* residual network with random
  Gaussian weights is propagated while keeping the contribution of every path
  depth apart: ``Y[k]`` is the part of the activations that went through
  exactly k residual branches. BN is linear once its batch statistics are
  fixed, so ``BN(x) = sum_k (Y[k] - mean(Y[k])) / sd(x)`` and the split is
  exact. The variance share of each depth, averaged over random networks,
  estimates :func:`~bnrepro.measure.path_depth.path_depth_distribution` (with the
  default ``stem_variance=1``: the input has unit variance).
* :func:`block_variances` -- De & Smith's Figure 4: per residual block, the
  variance of the skip path, of the residual branch and BN's moving
  statistics, read through the taps of :class:`bnrepro.models.resnet.Residual`.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..models.resnet import residual_blocks
from ..nn.batchnorm import is_batchnorm

MC_MODES = ("bn", "scaled", "none")


def _feature_var(t: torch.Tensor) -> torch.Tensor:
    """Variance per feature over the batch (and pixels), averaged over features.

    (N, C, H, W): per channel over N, H, W -- the statistic BN normalizes by;
    (..., N, C): per feature over N, for each leading index (the MC's stack).
    """
    if t.dim() == 4:  # (N, C, H, W): per channel over N, H, W
        return t.transpose(0, 1).flatten(1).var(1, unbiased=False).mean()
    return t.var(-2, unbiased=False).mean(-1)


@torch.no_grad()
def path_variance_mc(num_blocks: int, width: int = 256, batch: int = 256, mode: str = "bn",
                     n_networks: int = 20, seed: int = 0, eps: float = 1e-5) -> dict:
    """Variance share per path depth in random deep linear residual networks.

    Block i computes ``x_{i+1} = x_i + W_i g_i(x_i)`` with ``W_i ~ N(0, 1/width)``
    (LeCun normal, so ``Var(W u) = Var(u)``) and ``g_i`` = BN over the batch
    (``mode="bn"``), the fixed scaling ``1/sqrt(i)`` that BN amounts to in
    expectation (``"scaled"``), or nothing (``"none"``). The input is N(0, 1)
    (the unit-variance stem output). float64 throughout.

    Returns numpy arrays: ``cov`` (n_networks, d+1), the variance of the
    output carried by paths through k branches in each network (they sum to
    the network's output variance); ``mean``, the share of the *expected*
    output variance per depth, ``sum_n cov[n] / sum_n total[n]`` -- the
    quantity the theory predicts (a mean of per-network ratios would be biased
    by O(d/width): the total variance of a deep unnormalized network swings
    from one random network to the next); ``sem``, its jackknife standard
    error over networks; and ``block_var`` (n_networks, d+1): ``Var(x_i)``
    entering block i = 1..d and at the output.
    """
    if mode not in MC_MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(MC_MODES)}")
    if num_blocks < 1 or width < 1 or batch < 2 or n_networks < 2:
        raise ValueError("need num_blocks >= 1, width >= 1, batch >= 2 and n_networks >= 2")
    d = num_blocks
    gen = torch.Generator().manual_seed(seed)
    cov = np.zeros((n_networks, d + 1))
    block_var = np.zeros((n_networks, d + 1))
    for net in range(n_networks):
        ys = torch.zeros(d + 1, batch, width, dtype=torch.float64)
        ys[0] = torch.randn(batch, width, generator=gen, dtype=torch.float64)
        for i in range(1, d + 1):
            comps = ys[:i]                             # depths 0..i-1 are the only non-zero parts
            x = comps.sum(0)
            block_var[net, i - 1] = _feature_var(x).item()
            if mode == "bn":                           # batch statistics of the whole x_i
                sd = torch.sqrt(x.var(0, unbiased=False) + eps)
                g = (comps - comps.mean(1, keepdim=True)) / sd
            elif mode == "scaled":                     # Var(x_i) = i in expectation (stem variance 1)
                g = comps / math.sqrt(i)
            else:
                g = comps
            w = torch.randn(width, width, generator=gen, dtype=torch.float64) / math.sqrt(width)
            ys[1:i + 1] += g @ w                       # through branch i: one more branch on each path
        out = ys.sum(0)
        block_var[net, d] = _feature_var(out).item()
        # Depth k's part of Var(out): Cov(Y_k, out), per feature over the batch, averaged over
        # features. These add up to exactly Var(out) in every network (sum_k Y_k = out);
        # the alternative Var(Y_k) / sum_l Var(Y_l) drops the finite-batch cross-covariances,
        # which BN's per-feature division turns into an O(1/batch) bias towards deep paths.
        yc = ys - ys.mean(1, keepdim=True)
        cov[net] = (yc * (out - out.mean(0))).mean(1).mean(-1).numpy()
    total = cov.sum(1)
    mean = cov.sum(0) / total.sum()
    loo = (cov.sum(0) - cov) / (total.sum() - total)[:, None]  # leave-one-network-out estimates
    sem = np.sqrt((n_networks - 1) / n_networks * ((loo - loo.mean(0)) ** 2).sum(0))
    return {"cov": cov, "mean": mean, "sem": sem, "block_var": block_var}


def _first_bn(block: nn.Module) -> nn.Module | None:
    for m in block.modules():
        if is_batchnorm(m):
            return m
    return None


@torch.no_grad()
def block_variances(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, list[float]]:
    """Per residual block at initialisation (De & Smith, Figure 4).

    Runs ``batches`` through ``model`` in training mode (BN uses batch
    statistics) and returns, per block, averaged over the batches:
    ``skip`` = variance of the skip path entering the sum, ``branch`` =
    variance of the residual branch before any alpha, and, for the first BN
    layer of each block (the one that normalizes the block's input),
    ``bn_running_var`` and ``bn_running_mean_sq``: its moving variance and
    squared moving mean, averaged over channels. The BN layers' running
    statistics are reset and accumulated as a cumulative average over these
    batches (``momentum=None``); the model's own statistics are restored after.
    Variances are per channel over batch (and pixels), averaged over channels.
    """
    blocks = residual_blocks(model)
    if not blocks:
        raise ValueError("model has no residual blocks (bnrepro.models.resnet.Residual)")
    bns = [m for m in model.modules() if is_batchnorm(m)]
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    sums = {"skip": np.zeros(len(blocks)), "branch": np.zeros(len(blocks))}
    hooks = []
    for j, b in enumerate(blocks):
        for name, tap in (("skip", b.skip_tap), ("branch", b.branch_tap)):
            hooks.append(tap.register_forward_hook(
                lambda mod, inp, out, j=j, name=name: sums[name].__setitem__(
                    j, sums[name][j] + _feature_var(out.double()).item())))
    was_training, n = model.training, 0
    model.train()
    try:
        for xb in batches:
            model(xb)
            n += 1
        out = {k: (v / max(n, 1)).tolist() for k, v in sums.items()}
        firsts = [_first_bn(b) for b in blocks]
        out["bn_running_var"] = [float(m.running_var.mean()) if m is not None else math.nan for m in firsts]
        out["bn_running_mean_sq"] = [float(m.running_mean.pow(2).mean()) if m is not None else math.nan
                                     for m in firsts]
    finally:
        for h in hooks:
            h.remove()
        for m, (momentum, state) in zip(bns, saved):
            m.load_state_dict(state)
            m.momentum = momentum
        model.train(was_training)
    return out
