"""A small conv net whose normalization layer and its place are configuration (chapter "The normalization family").

:class:`NormConvNet` is three 3x3 conv blocks (width w, 2w, 4w; max-pool after
the first two), global average pooling and a linear output layer. Each block is
``conv -> norm -> activation`` (``placement="before"``: the normalization
before the nonlinearity, as Ioffe & Szegedy place BN, Sec. 3.2) or
``conv -> activation -> norm`` (``placement="after"``). The normalizations
(:data:`FAMILY`) differ only in the axes their statistics are taken over:

* ``"bn"``: batch and pixels, per channel (``nn.BatchNorm2d``);
* ``"group"``: per sample, over pixels and a group of channels (``nn.GroupNorm(groups, C)``);
* ``"layer"``: per sample, over pixels and all channels (``nn.GroupNorm(1, C)``: LayerNorm of a feature map);
* ``"instance"``: per sample and channel, over pixels (``nn.GroupNorm(C, C)``: InstanceNorm with an affine);
* ``"none"``.

Only BN depends on the other samples of the batch (and so has running statistics
for inference); the other four compute the same thing in training and in eval mode.

Two options, off by default, give the pre-BN network of Ioffe & Szegedy's
"accelerating BN networks" recipe (Sec. 4.2.1; chapter "Accelerating BN
networks: the recipe"): ``dropout=p`` drops the pooled features before the
output layer (Inception's 40%), and ``lrn=True`` puts local response
normalization after the first two blocks' pooling (GoogLeNet has one in each
of its first two stages).
Neither has parameters, so the initial weights do not depend on them.
"""

from __future__ import annotations

from torch import nn

from .common import check_choice, kaiming_normal_init, make_activation

FAMILY = ("bn", "group", "layer", "instance", "none")
PLACEMENTS = ("before", "after")


def family_norm(norm: str, channels: int, groups: int = 4) -> nn.Module:
    """The normalization layer ``norm`` (one of :data:`FAMILY`) for ``channels`` feature maps."""
    check_choice("norm", norm, FAMILY)
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        if channels % groups:
            raise ValueError(f"groups={groups}: must divide every block's channel count ({channels})")
        return nn.GroupNorm(groups, channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    if norm == "instance":
        return nn.GroupNorm(channels, channels)
    return nn.Identity()


class NormConvNet(nn.Sequential):
    """Three conv blocks with a configurable normalization and its placement (see the module)."""

    output_layer_names = ("fc.weight", "fc.bias")

    def __init__(self, norm: str = "bn", activation: str = "relu", placement: str = "before", width: int = 16,
                 num_classes: int = 10, in_channels: int = 1, groups: int = 4, dropout: float = 0.0,
                 lrn: bool = False):
        check_choice("placement", placement, PLACEMENTS)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width={width!r}: the first block's channel count must be an int >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r}: the drop probability must be in [0, 1)")
        layers: list[nn.Module] = []
        current = in_channels
        for i, channels in enumerate((width, 2 * width, 4 * width)):
            pair = [family_norm(norm, channels, groups), make_activation(activation)]
            layers += [nn.Conv2d(current, channels, 3, padding=1), *(pair if placement == "before" else pair[::-1])]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
                if lrn:  # local response normalization across 5 neighbouring channels
                    layers.append(nn.LocalResponseNorm(5))
            current = channels
        super().__init__()
        self.features = nn.Sequential(*layers)
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.pool = nn.Sequential(*head, nn.Dropout(dropout)) if dropout > 0 else nn.Sequential(*head)
        self.fc = nn.Linear(current, num_classes)
        self.norm, self.activation, self.placement = norm, activation, placement
        self.dropout, self.lrn = dropout, lrn
        kaiming_normal_init(self)
