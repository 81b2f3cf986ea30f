"""Building blocks shared by the book's models.

Every model takes a ``norm`` argument naming its normalization layer, so that
"with vs without BN" is configuration, not a second class:

* ``"bn"``      -- PyTorch's ``nn.BatchNorm1d/2d``;
* ``"bnrepro"`` -- the book's own :class:`bnrepro.nn.batchnorm.BatchNorm` (closed-form
  backward pass, chapter "BN from first principles");
* ``"none"``    -- no normalization;
* ``"bn_mean_only"`` / ``"bn_var_only"`` -- :class:`bnrepro.nn.batchnorm.BatchNorm` with
  ``mode="mean_only"`` / ``"var_only"`` (d2l's ablation exercise).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..nn.batchnorm import BatchNorm1d, BatchNorm2d, is_batchnorm

NORMS = ("bn", "bnrepro", "none", "bn_mean_only", "bn_var_only")
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
}


def check_choice(field: str, value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def make_norm(norm: str, num_features: int, dim: int) -> nn.Module:
    """A normalization layer for ``num_features`` channels.

    ``dim`` is 1 for (N, C) activations of a fully connected layer (statistics
    over the batch) and 2 for (N, C, H, W) feature maps (statistics over batch
    and pixels, Ioffe & Szegedy Section 3.2).
    """
    check_choice("norm", norm, NORMS)
    if norm == "none":
        return nn.Identity()
    if norm in ("bnrepro", "bn_mean_only", "bn_var_only"):
        mode = "full" if norm == "bnrepro" else norm[len("bn_"):]
        return (BatchNorm1d if dim == 1 else BatchNorm2d)(num_features, mode=mode)
    return nn.BatchNorm1d(num_features) if dim == 1 else nn.BatchNorm2d(num_features)


def make_activation(name: str) -> nn.Module:
    return ACTIVATIONS[check_choice("activation", name, tuple(ACTIVATIONS))]()


INITS = ("default", "xavier")


def init_weights(model: nn.Module, init: str = "default") -> nn.Module:
    """Re-initialise conv/linear weights: ``"default"`` keeps PyTorch's,
    ``"xavier"`` is d2l's ``train_ch6`` (Xavier-uniform weights, biases kept)."""
    check_choice("init", init, INITS)
    if init == "xavier":
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
    return model


def kaiming_normal_init(model: nn.Module) -> nn.Module:
    """open_lth's ``kaiming_normal``: N(0, 2 / fan_in) for every conv and linear weight."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
    return model


def has_batchnorm(model: nn.Module) -> bool:
    """True when any module normalizes with batch statistics in training (:func:`bnrepro.nn.is_batchnorm`)."""
    return any(is_batchnorm(m) for m in model.modules())


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
