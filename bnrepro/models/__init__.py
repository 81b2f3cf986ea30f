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

MODELS: dict[str, type[nn.Module]] = {"lenet": LeNet, "mlp": MLP}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name with keyword arguments."""
    return MODELS[check_choice("model", name, tuple(MODELS))](**kwargs)


__all__ = ["ACTIVATIONS", "INITS", "MLP", "MODELS", "NORMS", "LeNet", "build_model", "check_choice",
           "count_parameters", "has_batchnorm", "init_weights", "make_activation", "make_norm"]
