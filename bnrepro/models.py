"""Models used across the book.

Every model takes a ``norm`` argument naming its normalization layer, so that
"with vs without BN" is configuration, not a second class:

* ``"bn"``      -- PyTorch's ``nn.BatchNorm1d/2d``;
* ``"bnrepro"`` -- the book's own :class:`bnrepro.norm.BatchNorm` (closed-form
  backward pass, chapter "BN from first principles");
* ``"none"``    -- no normalization.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

NORMS = ("bn", "bnrepro", "none")
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
}


def _check_choice(field: str, value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def make_norm(norm: str, num_features: int, dim: int) -> nn.Module:
    """A normalization layer for ``num_features`` channels.

    ``dim`` is 1 for (N, C) activations of a fully connected layer (statistics
    over the batch) and 2 for (N, C, H, W) feature maps (statistics over batch
    and pixels, Ioffe & Szegedy Section 3.2).
    """
    _check_choice("norm", norm, NORMS)
    if norm == "none":
        return nn.Identity()
    if norm == "bnrepro":
        from .norm import BatchNorm  # local import: norm imports nothing from here

        return BatchNorm(num_features)
    return nn.BatchNorm1d(num_features) if dim == 1 else nn.BatchNorm2d(num_features)


def make_activation(name: str) -> nn.Module:
    return ACTIVATIONS[_check_choice("activation", name, tuple(ACTIVATIONS))]()


class LeNet(nn.Sequential):
    """LeNet-5 as in d2l's batch-norm chapter (sigmoid, average pooling).

    With ``norm="bn"`` a BN layer sits between every convolution / linear
    layer and its activation, exactly as d2l's ``BNLeNet``; with
    ``norm="none"`` it is d2l's plain LeNet (28x28 input, no padding).
    The layer before a BN layer keeps its bias, as in d2l, although BN makes
    it redundant (the chapter on first principles shows why).
    """

    def __init__(self, norm: str = "bn", activation: str = "sigmoid",
                 num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        _check_choice("norm", norm, NORMS)
        side = ((image_size - 4) // 2 - 4) // 2  # two 5x5 valid convs, two 2x2 pools
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for LeNet (needs >= 16)")
        super().__init__(
            nn.Conv2d(in_channels, 6, kernel_size=5), make_norm(norm, 6, 2), make_activation(activation),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), make_norm(norm, 16, 2), make_activation(activation),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.Linear(16 * side * side, 120), make_norm(norm, 120, 1), make_activation(activation),
            nn.Linear(120, 84), make_norm(norm, 84, 1), make_activation(activation),
            nn.Linear(84, num_classes),
        )
        self.norm = norm


class MLP(nn.Sequential):
    """Fully connected network: Linear -> [BN] -> activation per hidden layer.

    Ioffe & Szegedy's MNIST network (Figure 1) is ``MLP(784, (100, 100, 100),
    activation="sigmoid")`` with small Gaussian weights (``init_std``).
    """

    def __init__(self, in_features: int = 784, hidden: tuple[int, ...] = (100, 100, 100),
                 num_classes: int = 10, norm: str = "bn", activation: str = "sigmoid",
                 init_std: float | None = None):
        _check_choice("norm", norm, NORMS)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), make_norm(norm, h, 1), make_activation(activation)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
        self.norm = norm
        if init_std is not None:
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=init_std)
                    nn.init.zeros_(m.bias)


MODELS = {"lenet": LeNet, "mlp": MLP}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name (``lenet``, ``mlp``) with keyword arguments."""
    return MODELS[_check_choice("model", name, tuple(MODELS))](**kwargs)


INITS = ("default", "xavier")


def init_weights(model: nn.Module, init: str = "default") -> nn.Module:
    """Re-initialise conv/linear weights: ``"default"`` keeps PyTorch's,
    ``"xavier"`` is d2l's ``train_ch6`` (Xavier-uniform weights, biases kept)."""
    _check_choice("init", init, INITS)
    if init == "xavier":
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
    return model


def has_batchnorm(model: nn.Module) -> bool:
    """True when any module normalizes with batch statistics in training."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) or type(m).__name__ == "BatchNorm"
               for m in model.modules())


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
