"""VGG-style networks with a norm choice and Santurkar et al.'s "noisy BN" layer.

Santurkar, Tsipras, Ilyas & Madry 2018 (arXiv 1805.11604, Section 2.1) test
whether BN helps *because* it stabilises the distribution of layer inputs:
after each BN layer they perturb every activation of every sample with i.i.d.
noise of non-zero mean and non-unit variance, the noise distribution itself
changing at every step. :class:`DistributionNoise` is that perturbation;
``NoisyVGG(norm=..., noise=True)`` puts one after each normalisation layer (or,
with ``norm="none"``, in the same place of the plain network).

``norm="ghost"`` is ghost batch normalisation (BN statistics over sub-batches
of ``ghost_batch_size`` samples), used by the chapter "Is it internal
covariate shift?" to turn the noise of the batch statistics up and down
without changing the SGD batch.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .common import check_choice, make_norm

VGG_NORMS = ("bn", "bnrepro", "ghost", "none")
#: Feature layouts: ints are 3x3 conv widths, "M" a 2x2 max-pool.
VGG_CONFIGS: dict[str, tuple] = {
    # cpu profile: Fashion-MNIST 28x28 -> 14 -> 7 -> 3 after three pools
    "small": (16, "M", 32, "M", 64, 64, "M"),
    "tiny": (8, "M", 16, "M", 32, 32, "M"),
    # paper profile: VGG-A (VGG-11) convolutions, as in Santurkar et al.'s CIFAR-10 runs
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
}


class DistributionNoise(nn.Module):
    """Additive noise whose distribution is redrawn at every training step.

    At each forward pass in training mode, a mean ``mu ~ U(-mean_max, mean_max)``
    and a standard deviation ``sigma ~ U(std_min, std_max)`` are drawn for the
    layer, then every activation of every sample gets its own i.i.d. draw
    ``N(mu, sigma^2)`` added. So the noise has non-zero mean and non-unit
    variance, and its distribution moves from step to step: the inputs of the
    next layer keep shifting however the weights change.

    In eval mode the layer is the identity unless ``in_eval`` is True; then it
    keeps drawing noise, so that a noisy network is tested as it was trained
    (its later BN layers' running statistics include the noise).

    :func:`hold_noise` freezes the last draw of every noise layer of a model,
    so that measurements which evaluate the same batch several times (ICS,
    landscape) compare like with like.
    """

    def __init__(self, mean_max: float = 1.0, std_min: float = 0.5, std_max: float = 1.5,
                 in_eval: bool = False):
        super().__init__()
        if mean_max < 0 or std_min < 0 or std_max < std_min:
            raise ValueError(f"need mean_max >= 0 and 0 <= std_min <= std_max, got "
                             f"mean_max={mean_max}, std_min={std_min}, std_max={std_max}")
        self.mean_max, self.std_min, self.std_max = float(mean_max), float(std_min), float(std_max)
        self.held, self.in_eval = False, bool(in_eval)
        self.last_mu = self.last_sigma = float("nan")
        self._last: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"mu~U(-{self.mean_max:g}, {self.mean_max:g}), "
                f"sigma~U({self.std_min:g}, {self.std_max:g}), redrawn every step")

    def draw(self, like: torch.Tensor) -> torch.Tensor:
        """One step's noise for a tensor shaped like ``like`` (updates ``last_mu``/``last_sigma``)."""
        u = torch.rand(2).tolist()
        self.last_mu = (2 * u[0] - 1) * self.mean_max
        self.last_sigma = self.std_min + u[1] * (self.std_max - self.std_min)
        return torch.randn_like(like) * self.last_sigma + self.last_mu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training or self.in_eval):
            return x
        if not (self.held and self._last is not None and self._last.shape == x.shape):
            self._last = self.draw(x)
        return x + self._last


@contextlib.contextmanager
def hold_noise(model: nn.Module):
    """Within the block every :class:`DistributionNoise` of ``model`` reuses its last draw."""
    layers = [m for m in model.modules() if isinstance(m, DistributionNoise)]
    for m in layers:
        m.held = True
    try:
        yield model
    finally:
        for m in layers:
            m.held = False


class GhostBatchNorm(nn.BatchNorm2d):
    """BN whose training statistics come from sub-batches of ``ghost_batch_size`` samples.

    Works for (N, C) and (N, C, H, W) inputs. Each ghost batch is normalised
    with its own mean and variance and updates the running statistics, so the
    noise in the statistics is that of a batch of ``ghost_batch_size``.
    """

    def __init__(self, num_features: int, ghost_batch_size: int = 32, **kwargs):
        super().__init__(num_features, **kwargs)
        if ghost_batch_size < 2:
            raise ValueError(f"ghost_batch_size={ghost_batch_size}: BN needs >= 2 samples per ghost batch")
        self.ghost_batch_size = int(ghost_batch_size)

    def _check_input_dim(self, input):
        if input.dim() not in (2, 4):
            raise ValueError(f"expected a 2D or 4D input, got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.ghost_batch_size:
            return super().forward(x)
        chunks = list(x.split(self.ghost_batch_size))
        if len(chunks) > 1 and chunks[-1].shape[0] < 2:  # a 1-sample ghost batch has zero variance
            chunks[-2] = torch.cat(chunks[-2:])
            chunks.pop()
        return torch.cat([super(GhostBatchNorm, self).forward(c) for c in chunks])


def _norm(norm: str, channels: int, dim: int, ghost_batch_size: int) -> nn.Module:
    if norm == "ghost":
        return GhostBatchNorm(channels, ghost_batch_size)
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
                 noise_in_eval: bool = True, ghost_batch_size: int = 32):
        super().__init__()
        check_choice("norm", norm, VGG_NORMS)
        layout = VGG_CONFIGS[check_choice("config", config, tuple(VGG_CONFIGS))] if isinstance(config, str) \
            else tuple(config)
        self.norm, self.noise = norm, bool(noise)
        bias = norm == "none"

        def post(channels: int, dim: int) -> list[nn.Module]:
            mods = [_norm(norm, channels, dim, ghost_batch_size)]
            if noise:
                mods.append(DistributionNoise(noise_mean_max, noise_std_min, noise_std_max, noise_in_eval))
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


__all__ = ["NoisyVGG", "VGG_CONFIGS", "VGG_NORMS", "DistributionNoise", "GhostBatchNorm", "Tap", "hold_noise",
           "layer_groups"]
