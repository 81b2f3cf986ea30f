"""Population statistics for the inference network: Ioffe & Szegedy's Algorithm 2.

Reference: S. Ioffe and C. Szegedy, "Batch Normalization", arXiv:1502.03167.

:func:`recalibrate_bn`, :func:`population_statistics`, :func:`bn_statistics`:
the inference network uses population statistics, ``E[x] = E_B[mu_B]`` and
``Var[x] = m/(m-1) E_B[sigma_B^2]``, averaged over training mini-batches of
size ``m``, instead of the running averages that ``nn.BatchNorm`` keeps
during training.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..nn.batchnorm import is_batchnorm

__all__ = ["bn_layers", "bn_statistics", "recalibrate_bn", "population_statistics"]


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every BN layer of ``model`` (:func:`bnrepro.nn.batchnorm.is_batchnorm`:
    ``nn.BatchNorm1d/2d/3d`` or :class:`bnrepro.nn.batchnorm.BatchNorm`) that keeps running statistics."""
    return [(name, m) for name, m in model.named_modules()
            if is_batchnorm(m) and getattr(m, "running_mean", None) is not None]


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
