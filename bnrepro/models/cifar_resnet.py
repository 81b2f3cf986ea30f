"""The CIFAR ResNet of open_lth (Frankle, Schwab & Morcos's code).

The chapter "Training only BatchNorm" (book/bn_only) trains this network (and
open_lth's BN-VGG, :mod:`bnrepro.models.vgg`) with everything frozen at its
random initialisation except BN's gamma and beta. The architecture follows open_lth's ``models/cifar_resnet.py`` (He et
al. 2016, Section 4.2, with a projection shortcut):

* ResNet-N has N = 6D + 2 layers: one 3x3 convolution, three stages of D
  residual blocks each (two 3x3 convolutions per block), and a linear output
  layer. The stages have W, 2W and 4W channels (W = 16 by default); the first
  block of stages 2 and 3 halves the resolution with stride 2.
* Block: conv-BN-ReLU-conv-BN, add the shortcut, ReLU. Where the shape
  changes the shortcut is a 1x1 stride-2 convolution followed by BN
  (open_lth calls it a downsample), otherwise the identity.
* Convolutions have no bias (BN's beta plays its role); global average
  pooling before the output layer.
* Initialisation: Kaiming-normal (fan-in, ReLU gain) conv and linear weights
  (open_lth ``initializers.kaiming_normal``); the output bias keeps PyTorch's
  default; BN's gamma/beta come from a named initialiser in
  :mod:`bnrepro.nn.freeze` (open_lth's default is ``"uniform"``: gamma ~ U[0, 1]).

Counting BN parameters: every BN channel has one gamma and one beta, so
ResNet-14 (D = 2) has 2 * (16 + 4*16 + (4*32 + 32) + (4*64 + 64)) = 1,120
and ResNet-110 has 8,288 (the paper's numbers; ``tests/test_freeze.py``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .common import NORMS, check_choice, kaiming_normal_init, make_norm

__all__ = ["CifarResNet", "cifar_resnet", "resnet_blocks_per_stage"]


def resnet_blocks_per_stage(depth: int) -> int:
    """D for ResNet-``depth`` (depth = 6D + 2), or a ValueError saying which depths exist."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth={depth!r}: a CIFAR ResNet has depth = 6*D + 2 with D >= 1 blocks "
                         f"per stage, e.g. 8, 14, 20, 32, 56, 110 (open_lth's cifar_resnet_N)")
    return (depth - 2) // 6


class _Block(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the (projected) shortcut, then ReLU."""

    def __init__(self, f_in: int, f_out: int, downsample: bool, norm: str):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, f_out, 2)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = make_norm(norm, f_out, 2)
        if downsample or f_in != f_out:
            # open_lth: 1x1 convolution with stride 2 and its own BN.
            self.shortcut = nn.Sequential(nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False),
                                          make_norm(norm, f_out, 2))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-``depth`` for small images (open_lth's ``cifar_resnet_<depth>_<width>``)."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10,
                 in_channels: int = 3, norm: str = "bn"):
        super().__init__()
        blocks_per_stage = resnet_blocks_per_stage(depth)
        check_choice("norm", norm, NORMS)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width={width!r}: the first stage's channel count must be an int >= 1")
        self.depth, self.width, self.norm = depth, width, norm
        self.conv = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn = make_norm(norm, width, 2)
        blocks, current = [], width
        for stage, filters in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks_per_stage):
                blocks.append(_Block(current, filters, downsample=stage > 0 and i == 0, norm=norm))
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(current, num_classes)
        kaiming_normal_init(self)

    #: Parameter names of the output layer (open_lth's ``output_layer_names``).
    output_layer_names = ("fc.weight", "fc.bias")

    @property
    def residual_bn_names(self) -> tuple[str, ...]:
        """Module names of the last BN of every residual branch (``blocks.<i>.bn2``): the layers
        a zero-gamma initialisation zeroes so that every block starts as its shortcut."""
        return tuple(f"blocks.{i}.bn2" for i in range(len(self.blocks)))

    def forward(self, x):
        out = F.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def cifar_resnet(depth: int, width: int = 16, num_classes: int = 10, in_channels: int = 3,
                 norm: str = "bn") -> CifarResNet:
    """ResNet-``depth`` (depth = 6D + 2) with stage widths W, 2W, 4W; see :class:`CifarResNet`."""
    return CifarResNet(depth, width, num_classes, in_channels, norm)
