"""Why normalizing inputs matters at all: least squares with one feature of mean 200 and one of mean 0.

:func:`feature_scaling_regression` trains a linear model on raw,
standardized or batch-normalized features (:func:`feature_scaling_data`).
It is a regression, which the book's classification loop
(:func:`bnrepro.training.loop.train`) does not cover: a few lines of plain
mini-batch SGD.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SCALING_LRS", "SCALING_METHODS", "SCALING_STEPS", "best_scaling_losses", "feature_scaling_data",
           "feature_scaling_regression"]


SCALING_METHODS = ("raw", "standardized", "bn")
#: The chapter's comparison: SGD steps per run and the learning rates tried per method.
SCALING_STEPS = 300
SCALING_LRS = (1e-5, 3e-5, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
_W_TRUE, _B_TRUE, _NOISE = (1.5, -2.0), 0.5, 0.1


def feature_scaling_data(n: int = 1000, offset: float = 200.0, seed: int = 0):
    """Two features, ``x1 ~ N(offset, 1)`` and ``x2 ~ N(0, 1)``, and
    ``y = 1.5 (x1 - offset) - 2 x2 + 0.5 + noise`` (noise std 0.1, so the best
    possible half mean squared error is about 0.005). The target itself is
    centred, so only the inputs are badly scaled; in raw coordinates the
    solution is ``w = (1.5, -2)``, ``b = 0.5 - 1.5 offset``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    y = z @ torch.tensor(_W_TRUE) + _B_TRUE + _NOISE * torch.randn(n, generator=g)
    x = z.clone()
    x[:, 0] += offset
    return x, y.unsqueeze(1)


def feature_scaling_regression(method: str, lr: float, steps: int = 300, batch_size: int = 50,
                               n: int = 1000, offset: float = 200.0, seed: int = 0,
                               log_every: int = 5) -> dict:
    """Least squares by mini-batch SGD on :func:`feature_scaling_data`, one learning rate.

    ``method``: ``"raw"`` (a linear model on the raw features),
    ``"standardized"`` (features shifted and scaled by their training-set mean
    and std first) or ``"bn"`` (``nn.BatchNorm1d(2)`` in front of the linear
    model, trained on raw features). Weights start at zero; the data order
    depends on ``seed`` only, so all methods see the same batches.

    Returns the half mean squared error on all ``n`` samples every
    ``log_every`` steps (``loss``; for ``"bn"`` with the statistics of the
    whole set, as training sees it, without touching the running averages),
    and for ``"bn"`` also ``final_loss_eval``: the loss in eval mode, with the
    running statistics. A loss above 1e30 or non-finite stops the run
    (``diverged``).
    """
    if method not in SCALING_METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(SCALING_METHODS)}")
    x, y = feature_scaling_data(n, offset, seed)
    if method == "standardized":
        x = (x - x.mean(0)) / x.std(0)
    linear = nn.Linear(2, 1)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    model = nn.Sequential(nn.BatchNorm1d(2), linear) if method == "bn" else linear
    params = list(model.parameters())
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    out = {"method": method, "lr": lr, "step": [], "loss": [], "diverged": False}

    @torch.no_grad()
    def full_loss() -> float:
        if method == "bn":
            bn = model[0]
            h = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
            return 0.5 * F.mse_loss(linear(h), y).item()
        return 0.5 * F.mse_loss(model(x), y).item()

    pos = 0
    for t in range(steps + 1):
        if t % log_every == 0 or t == steps:
            value = full_loss()
            out["step"].append(t)
            out["loss"].append(value)
            if not math.isfinite(value) or value > 1e30:
                out["diverged"] = True
                break
        if t == steps:
            break
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        loss = 0.5 * F.mse_loss(model(x[idx]), y[idx])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():  # plain SGD (torch.optim.SGD would do the same, at a higher import cost)
            for p, g_ in zip(params, grads):
                p.sub_(g_, alpha=lr)
    out["final_loss"] = out["loss"][-1] if not out["diverged"] else math.inf
    if method == "bn":
        model.eval()
        with torch.no_grad():
            out["final_loss_eval"] = (0.5 * F.mse_loss(model(x), y).item()
                                      if not out["diverged"] else math.inf)
    return out


def best_scaling_losses(steps: int = SCALING_STEPS, seed: int = 0) -> dict[str, float]:
    """Feature scaling (:func:`feature_scaling_regression`): per method, the
    lowest final loss over :data:`SCALING_LRS` among the runs that did not diverge."""
    best = {}
    for method in ("raw", "standardized", "bn"):
        runs = [feature_scaling_regression(method, lr, steps=steps, seed=seed) for lr in SCALING_LRS]
        best[method] = min(r["final_loss"] for r in runs if not r["diverged"])
    return best
