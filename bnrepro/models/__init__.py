"""Models used across the book.

One module per family; every model takes a ``norm`` argument (``"bn"``,
``"bnrepro"``, ``"none"``) so that "with vs without BN" is configuration.
``build_model(name, **kwargs)`` builds any registered model by name.

* :mod:`~bnrepro.models.lenet` -- LeNet-5 and an MLP (d2l);
* :mod:`~bnrepro.models.cifar_resnet` -- open_lth's CIFAR ResNet;
* :mod:`~bnrepro.models.vgg` -- open_lth's BN-VGG and the ICS chapter's VGG (:class:`NoisyVGG`);
* :mod:`~bnrepro.models.convnet` -- a small conv net with BN, GroupNorm, LayerNorm, InstanceNorm or none;
* :mod:`~bnrepro.models.noise` -- Santurkar et al.'s noise layer;
* :mod:`~bnrepro.models.resnet` -- De & Smith's ResNets (SkipInit) and the linear ResNet;
* :mod:`~bnrepro.models.common` -- the norm choice and other shared building blocks.
"""

from __future__ import annotations

from torch import nn

from .cifar_resnet import CifarResNet, cifar_resnet
from .common import (
    ACTIVATIONS,
    INITS,
    NORMS,
    check_choice,
    count_parameters,
    has_batchnorm,
    init_weights,
    kaiming_normal_init,
    make_activation,
    make_norm,
)
from .convnet import FAMILY, PLACEMENTS, NormConvNet, family_norm
from .lenet import MLP, LeNet
from .noise import DistributionNoise, hold_noise
from .resnet import VARIANTS as RESNET_VARIANTS
from .resnet import LinearResNet, ResNet, residual_blocks
from .vgg import VGG, NoisyVGG, layer_groups, vgg_bn

MODELS: dict[str, type[nn.Module]] = {"lenet": LeNet, "mlp": MLP, "cifar_resnet": CifarResNet, "vgg_bn": VGG,
                                     "noisy_vgg": NoisyVGG, "norm_convnet": NormConvNet,
                                     "resnet": ResNet, "linear_resnet": LinearResNet}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name with keyword arguments."""
    return MODELS[check_choice("model", name, tuple(MODELS))](**kwargs)


__all__ = ["ACTIVATIONS", "INITS", "MLP", "MODELS", "NORMS", "RESNET_VARIANTS", "CifarResNet",
           "DistributionNoise", "FAMILY", "LeNet", "LinearResNet", "NoisyVGG", "NormConvNet", "PLACEMENTS",
           "ResNet", "VGG", "build_model", "check_choice", "cifar_resnet", "count_parameters", "family_norm",
           "has_batchnorm", "hold_noise", "init_weights", "kaiming_normal_init", "layer_groups",
           "make_activation", "make_norm", "residual_blocks", "vgg_bn"]
