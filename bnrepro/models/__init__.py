"""Models used across the book.

One module per family; every model takes a ``norm`` argument (``"bn"``,
``"bnrepro"``, ``"none"``) so that "with vs without BN" is configuration.
``build_model(name, **kwargs)`` builds any registered model by name.
"""

from __future__ import annotations

from torch import nn

from .common import (ACTIVATIONS, INITS, NORMS, check_choice, count_parameters, has_batchnorm,
                     init_weights, make_activation, make_norm)
from .lenet import MLP, LeNet
from .cifar import VGG, CifarResNet, cifar_resnet, vgg_bn
from .vgg import DistributionNoise, GhostBatchNorm, NoisyVGG, hold_noise, layer_groups
from .resnet import VARIANTS as RESNET_VARIANTS, LinearResNet, ResNet, residual_blocks

MODELS: dict[str, type[nn.Module]] = {"lenet": LeNet, "mlp": MLP, "cifar_resnet": CifarResNet, "vgg_bn": VGG,
                                     "noisy_vgg": NoisyVGG,
                                     "resnet": ResNet, "linear_resnet": LinearResNet}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name with keyword arguments."""
    return MODELS[check_choice("model", name, tuple(MODELS))](**kwargs)


__all__ = ["ACTIVATIONS", "INITS", "MLP", "MODELS", "NORMS", "LeNet", "build_model", "check_choice",
           "count_parameters", "has_batchnorm", "init_weights", "make_activation", "make_norm"]
