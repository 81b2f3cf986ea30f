"""LeNet-5 (d2l's BN chapter) and the fully connected network of Ioffe & Szegedy's Figure 1."""

from __future__ import annotations

from torch import nn

from .common import NORMS, check_choice, make_activation, make_norm


class LeNet(nn.Sequential):
    """LeNet-5 as in d2l's batch-norm chapter (sigmoid, average pooling).

    With ``norm="bn"`` a BN layer sits between every convolution / linear
    layer and its activation, exactly as d2l's ``BNLeNet``; with
    ``norm="none"`` the same network without BN (28x28 input; like d2l's BN
    chapter, the first convolution has no padding, unlike its LeNet chapter).
    The layer before a BN layer keeps its bias, as in d2l, although BN makes
    it redundant (the chapter on first principles shows why).
    """

    def __init__(self, norm: str = "bn", activation: str = "sigmoid",
                 num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        check_choice("norm", norm, NORMS)
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
        check_choice("norm", norm, NORMS)
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
