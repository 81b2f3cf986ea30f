"""Small, exact experiments of the chapter "Batch normalization from first principles".

Reference: S. Ioffe and C. Szegedy, "Batch Normalization", arXiv:1502.03167.

* :func:`recalibrate_bn`, :func:`population_statistics`, :func:`bn_statistics`
  -- Algorithm 2: the inference network uses population statistics,
  ``E[x] = E_B[mu_B]`` and ``Var[x] = m/(m-1) E_B[sigma_B^2]``, averaged over
  training mini-batches of size ``m``, instead of the running averages that
  ``nn.BatchNorm`` keeps during training.
* :func:`bias_explosion` -- Section 2: a bias followed by mean subtraction,
  trained with the mean inside or outside the gradient.
* :func:`feature_scaling_regression` -- why normalizing inputs matters at all:
  least squares with one feature of mean 200 and one of mean 0.

The last two train tiny models with their own loss (a regression, and a loss
on the normalized activations), which the book's classification loop
(:func:`bnrepro.training.loop.train`) does not cover; they are a few lines of plain
gradient descent each.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.batchnorm import BatchNorm

__all__ = ["bn_layers", "bn_statistics", "recalibrate_bn", "population_statistics",
           "bias_explosion", "feature_scaling_data", "feature_scaling_regression",
           "SCALING_METHODS"]


# --------------------------------------------------------------------------- Algorithm 2
def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every BN layer of ``model`` that keeps running statistics
    (``nn.BatchNorm1d/2d/3d`` or :class:`bnrepro.nn.batchnorm.BatchNorm`)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, BatchNorm))
            and getattr(m, "running_mean", None) is not None]


def bn_statistics(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A copy of each BN layer's ``(running_mean, running_var)``, keyed by module name."""
    return {name: (m.running_mean.detach().clone(), m.running_var.detach().clone())
            for name, m in bn_layers(model)}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Replace every BN layer's running statistics by population statistics (Algorithm 2).

    The training network processes ``x`` in consecutive mini-batches of
    ``batch_size`` (the last, incomplete one is dropped, unless it is the only
    one) and each BN layer stores the plain average of the batch means and of
    the *unbiased* batch variances, ``m/(m-1) sigma_B^2``: Algorithm 2, steps
    8-10. It does so through PyTorch's own cumulative average
    (``momentum=None``), so it works for ``nn.BatchNorm*`` and
    :class:`~bnrepro.nn.batchnorm.BatchNorm` alike. Layers other than BN run in eval
    mode (no dropout), BN layers in training mode, as in the training network
    of Algorithm 2. The model's modes, momenta and ``num_batches_tracked``
    counters are restored; nothing else changes. Returns the model.
    """
    layers = [m for _, m in bn_layers(model)]
    if not layers:
        raise ValueError("the model has no BN layer with running statistics "
                         "(track_running_stats=True): nothing to recalibrate")
    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size}: BN statistics need at least 2 samples per batch")
    n = len(x)
    if n < 2:
        raise ValueError(f"need at least 2 samples to recalibrate, got {n}")
    modes = {m: m.training for m in model.modules()}
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: equal weight for every batch
            m.train()
        stop = n - n % batch_size if n >= batch_size else n
        step = batch_size if n >= batch_size else n
        for i in range(0, stop, step):
            model(x[i:i + step])
    finally:
        for m, (momentum, count) in zip(layers, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
        for m, mode in modes.items():
            m.training = mode
    return model


def population_statistics(model: nn.Module, x: torch.Tensor,
                          batch_size: int = 256) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Algorithm 2's ``(E[x], Var[x])`` of every BN layer over ``x``, keyed by module name.

    Computed on a copy: ``model`` itself is left untouched.
    """
    return bn_statistics(recalibrate_bn(copy.deepcopy(model), x, batch_size))


# --------------------------------------------------------------------------- Section 2
def bias_explosion(in_gradient: bool, steps: int = 200, lr: float = 0.1, n: int = 256,
                   d_in: int = 5, d_out: int = 3, target_mean: float = 1.0, seed: int = 0) -> dict:
    """Ioffe & Szegedy, Section 2: ``x_hat = u + b - E[u + b]`` trained by gradient descent.

    A linear layer ``u = W x`` plus a bias ``b`` is centred over the batch
    (the whole synthetic training set, ``n`` samples) and trained on
    ``l = mean ||x_hat - y||^2`` towards targets ``y = A x + target_mean``
    whose non-zero mean a centred ``x_hat`` can never reach. With
    ``in_gradient=False`` the mean ``E[u + b]`` is treated as a constant in
    the gradient step (detached), so ``dl/db = sum dl/dx_hat`` never
    vanishes; with ``in_gradient=True`` the gradient sees that ``x_hat`` does
    not depend on ``b`` at all. Full-batch gradient descent, float64.

    Returns per-step lists: ``b_norm`` (``||b||`` before the step), ``loss``,
    and ``loss_change_from_b``: how much the loss moves when only ``b`` takes
    its step (the normalization recomputed): the paper says zero.
    """
    g = torch.Generator().manual_seed(seed)
    kw = {"dtype": torch.float64}
    x = torch.randn(n, d_in, generator=g, **kw)
    a = torch.randn(d_out, d_in, generator=g, **kw)
    y = x @ a.T + target_mean
    w = (0.1 * torch.randn(d_out, d_in, generator=g, **kw)).requires_grad_()
    b = (0.1 * torch.randn(d_out, generator=g, **kw)).requires_grad_()

    def forward(w_, b_):
        v = x @ w_.T + b_
        mean = v.mean(0) if in_gradient else v.mean(0).detach()
        return ((v - mean - y) ** 2).mean()

    out = {"step": [], "b_norm": [], "loss": [], "loss_change_from_b": []}
    for t in range(steps):
        loss = forward(w, b)
        w.grad = b.grad = None
        loss.backward()
        with torch.no_grad():
            b_new = b - lr * b.grad
            change = forward(w, b_new).item() - loss.item()
            out["step"].append(t)
            out["b_norm"].append(b.norm().item())
            out["loss"].append(loss.item())
            out["loss_change_from_b"].append(change)
            w -= lr * w.grad
            b.copy_(b_new)
    out["b_norm_final"] = b.detach().norm().item()
    return out


# --------------------------------------------------------------------------- feature scaling
SCALING_METHODS = ("raw", "standardized", "bn")
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
