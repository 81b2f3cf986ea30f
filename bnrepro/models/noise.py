"""Santurkar et al.'s "noisy BN" perturbation: noise whose distribution changes at every step.

Santurkar, Tsipras, Ilyas & Madry 2018 (arXiv 1805.11604, Section 2.1) test
whether BN helps *because* it stabilises the distribution of layer inputs:
after each BN layer they perturb every activation of every sample with i.i.d.
noise of non-zero mean and non-unit variance, the noise distribution itself
changing at every step. :class:`DistributionNoise` is that perturbation
(``NoisyVGG(noise=True)`` in :mod:`bnrepro.models.vgg` puts one after each
normalisation layer); :func:`hold_noise` freezes it for measurements.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["DistributionNoise", "hold_noise"]


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
