"""VGG networks: open_lth's BN-VGG, and the VGG with a norm choice and Santurkar et al.'s noise.

* :class:`VGG` (:func:`vgg_bn`, plans in :data:`VGG_PLANS`) -- open_lth's
  ``cifar_vgg`` (Frankle, Schwab & Morcos's code): conv(bias)-BN-ReLU
  modules, max-pools, global average pooling and one linear output layer.
  The chapter "Training only BatchNorm" (book/bn_only) trains it with
  everything but BN's gamma and beta frozen at initialisation.
* :class:`NoisyVGG` (layouts in :data:`VGG_CONFIGS`) -- [conv3x3 -> norm ->
  (noise) -> ReLU] blocks and an MLP head, for the chapter "Is it internal
  covariate shift?". ``NoisyVGG(norm=..., noise=True)`` puts Santurkar et
  al.'s :class:`~bnrepro.models.noise.DistributionNoise` after each
  normalisation layer (or, with ``norm="none"``, in the same place of the
  plain network). ``norm="ghost"`` is ghost batch normalisation
  (:class:`bnrepro.nn.ghost.GhostBatchNorm`: BN statistics over sub-batches
  of ``ghost_batch_size`` samples), which turns the noise of the batch
  statistics up and down without changing the SGD batch.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.ghost import GhostBatchNorm
from .common import NORMS, check_choice, kaiming_normal_init, make_norm
from .noise import DistributionNoise

__all__ = ["VGG", "VGG_PLANS", "vgg_bn", "NoisyVGG", "VGG_CONFIGS", "VGG_NORMS", "Tap", "layer_groups"]


# --------------------------------------------------------------------------- open_lth's BN-VGG
# open_lth's cifar_vgg plans (numbers = channels of a 3x3 conv-BN-ReLU, "M" = 2x2 max-pool),
# written for width 64; "small" is ours: four stages, fits 28x28 inputs and a CPU.
VGG_PLANS: dict[str, tuple] = {
    "small": (64, "M", 128, "M", 256, "M", 512),
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512),
}


class VGG(nn.Sequential):
    """VGG with BN (open_lth's ``cifar_vgg``): conv(bias)-BN-ReLU modules, max-pools,
    global average pooling and one linear output layer.

    ``width`` scales every stage: the plans are written for 64 channels in the
    first stage (open_lth), ``width=16`` makes each layer 4x narrower.
    """

    output_layer_names = ("fc.weight", "fc.bias")

    def __init__(self, plan: str = "vgg11", width: int = 64, num_classes: int = 10,
                 in_channels: int = 3, norm: str = "bn"):
        check_choice("plan", plan, tuple(VGG_PLANS))
        check_choice("norm", norm, NORMS)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width={width!r}: the first stage's channel count must be an int >= 1")
        layers: list[nn.Module] = []
        current = in_channels
        for spec in VGG_PLANS[plan]:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                filters = max(1, spec * width // 64)
                layers += [nn.Conv2d(current, filters, 3, padding=1), make_norm(norm, filters, 2),
                           nn.ReLU()]
                current = filters
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(current, num_classes)
        self.plan, self.width, self.norm = plan, width, norm
        kaiming_normal_init(self)


def vgg_bn(plan: str = "small", width: int = 64, num_classes: int = 10, in_channels: int = 3,
           norm: str = "bn") -> VGG:
    """A BN-VGG (see :class:`VGG`); ``plan="small", width=16`` is the cpu-profile network."""
    return VGG(plan, width, num_classes, in_channels, norm)


# --------------------------------------------------------------------------- the VGG of the ICS chapter
#: NoisyVGG's norm choices: make_norm's "bn", "bnrepro", "none", and ghost BN.
VGG_NORMS = ("bn", "bnrepro", "ghost", "none")
#: NoisyVGG's feature layouts (not open_lth's VGG_PLANS): ints are 3x3 conv widths, "M" a 2x2 max-pool.
VGG_CONFIGS: dict[str, tuple] = {
    # cpu profile: Fashion-MNIST 28x28 -> 14 -> 7 -> 3 after three pools
    "small": (16, "M", 32, "M", 64, 64, "M"),
    "tiny": (8, "M", 16, "M", 32, 32, "M"),
    # paper profile: VGG-A (VGG-11) convolutions, as in Santurkar et al.'s CIFAR-10 runs
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
}


def _norm(norm: str, channels: int, dim: int, ghost_batch_size: int) -> nn.Module:
    if norm == "ghost":
        # PyTorch's BN kernel on each ghost batch, as the stored ghost-BN runs were computed
        # (nn.BatchNorm2d on each chunk in turn; tests/test_ghost_vgg.py checks bit for bit).
        return GhostBatchNorm(channels, ghost_batch_size, torch_kernel=True)
    return make_norm(norm, channels, dim)


class Tap(nn.Identity):
    """A named point whose output is the input of the next layer's non-linearity (probed by hooks)."""


class NoisyVGG(nn.Module):
    """A VGG network: [conv3x3 -> norm -> (noise) -> ReLU] blocks and max-pools, then an MLP head.

    ``config`` names a layout in :data:`VGG_CONFIGS` (or is a tuple of widths
    and ``"M"``). Every weight layer but the last is followed by the norm
    (``"bn"``, ``"bnrepro"``, ``"ghost"`` or ``"none"``), optionally by
    :class:`DistributionNoise` (kept on at test time when ``noise_in_eval``),
    then by a :class:`Tap` (where activation distributions are read) and a ReLU. The conv/linear layers before a norm
    layer have no bias (BN's beta replaces it); without a norm they keep one.
    """

    def __init__(self, config="small", norm: str = "bn", noise: bool = False, num_classes: int = 10,
                 in_channels: int = 1, image_size: int = 28, hidden: int = 128,
                 noise_mean_max: float = 1.0, noise_std_min: float = 0.5, noise_std_max: float = 1.5,
                 noise_in_eval: bool = True, ghost_batch_size: int = 32, noise_kind: str = "iid"):
        super().__init__()
        check_choice("norm", norm, VGG_NORMS)
        layout = VGG_CONFIGS[check_choice("config", config, tuple(VGG_CONFIGS))] if isinstance(config, str) \
            else tuple(config)
        self.norm, self.noise = norm, bool(noise)
        bias = norm == "none"

        def post(channels: int, dim: int) -> list[nn.Module]:
            mods = [_norm(norm, channels, dim, ghost_batch_size)]
            if noise:
                mods.append(DistributionNoise(noise_mean_max, noise_std_min, noise_std_max, noise_in_eval,
                                              kind=noise_kind))
            return mods + [Tap(), nn.ReLU(inplace=False)]

        layers: list[nn.Module] = []
        width, side = in_channels, image_size
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                side //= 2
            else:
                layers += [nn.Conv2d(width, int(item), 3, padding=1, bias=bias)] + post(int(item), 2)
                width = int(item)
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for {len(layout)} layers with pools")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, hidden, bias=bias),
                                        *post(hidden, 1), nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def weight_layers(self) -> list[nn.Module]:
        """The conv and linear layers in forward order (the "layers" of the ICS measure)."""
        return [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def taps(self) -> list[Tap]:
        """The points (after norm and noise, before ReLU) whose distributions the chapter plots."""
        return [m for m in self.modules() if isinstance(m, Tap)]


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """The parameters of ``model`` split into layers: each weight layer with the norm that follows it.

    A new group starts at every conv/linear module (in registration order,
    which is forward order for the book's sequential models); parameters of
    other modules (BN's gamma and beta) join the current group.
    """
    groups: list[list[nn.Parameter]] = []
    for m in model.modules():
        own = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            groups.append(own)
        elif own:
            if not groups:
                groups.append([])
            groups[-1].extend(own)
    return groups
