"""Santurkar et al.'s "noisy BN" perturbation: noise whose distribution changes at every step.

Santurkar, Tsipras, Ilyas & Madry 2018 (arXiv 1805.11604, Section 2.1) test
whether BN helps *because* it stabilises the distribution of layer inputs:
after each BN layer they perturb every activation of every sample with i.i.d.
noise of non-zero mean and non-unit variance, the noise distribution itself
changing at every step. :class:`DistributionNoise` is that perturbation
(``NoisyVGG(noise=True)`` in :mod:`bnrepro.models.vgg` puts one after each
normalisation layer); :func:`hold_noise` freezes it for measurements.

That perturbation does two things at once: it moves the distribution of the
next layer's inputs, and, because every sample gets its own draw, it buries
part of what tells the samples apart (at sigma = 1 the noise is as large as
the normalised signal). ``kind="affine"`` separates the two: at every step a
scale ``a_{t,c}`` and a shift ``b_{t,c}`` are drawn per channel and applied
to the whole batch, ``x <- a_{t,c} x + b_{t,c}``. The distribution moves as
much (non-zero mean, non-unit variance, redrawn every step), but within a
step the map is the same increasing function for every sample, so no sample
information is lost.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["DistributionNoise", "NOISE_KINDS", "hold_noise"]


#: The two perturbations: i.i.d. noise per activation (the paper's), or a per-channel affine map per step.
NOISE_KINDS = ("iid", "affine")


class DistributionNoise(nn.Module):
    """Noise whose distribution is redrawn at every training step.

    At each forward pass in training mode, a mean ``mu ~ U(-mean_max, mean_max)``
    and a standard deviation ``sigma ~ U(std_min, std_max)`` are drawn for the
    layer, then every activation of every sample gets its own i.i.d. draw
    ``N(mu, sigma^2)`` added. So the noise has non-zero mean and non-unit
    variance, and its distribution moves from step to step: the inputs of the
    next layer keep shifting however the weights change.

    With ``kind="affine"`` the layer instead draws, per channel ``c`` and per
    step, a scale ``a ~ U(1 - std_spread, 1 + std_spread)`` with
    ``std_spread = (std_max - std_min) / 2`` (the same range as the i.i.d.
    noise's sigma, shifted to centre on 1) and a shift ``b ~ U(-mean_max,
    mean_max)``, and returns ``a x + b`` with the same ``(a, b)`` for every
    sample of the batch (``last_mu``/``last_sigma``: the means of ``b`` and
    ``a`` over channels).

    In eval mode the layer is the identity unless ``in_eval`` is True; then it
    keeps drawing noise, so that a noisy network is tested as it was trained
    (its later BN layers' running statistics include the noise).

    :func:`hold_noise` freezes the last draw of every noise layer of a model,
    so that measurements which evaluate the same batch several times (ICS,
    landscape) compare like with like.
    """

    def __init__(self, mean_max: float = 1.0, std_min: float = 0.5, std_max: float = 1.5,
                 in_eval: bool = False, kind: str = "iid"):
        super().__init__()
        if kind not in NOISE_KINDS:
            raise ValueError(f"kind={kind!r} is not one of {', '.join(NOISE_KINDS)}")
        if mean_max < 0 or std_min < 0 or std_max < std_min:
            raise ValueError(f"need mean_max >= 0 and 0 <= std_min <= std_max, got "
                             f"mean_max={mean_max}, std_min={std_min}, std_max={std_max}")
        self.mean_max, self.std_min, self.std_max = float(mean_max), float(std_min), float(std_max)
        self.held, self.in_eval, self.kind = False, bool(in_eval), kind
        self.last_mu = self.last_sigma = float("nan")
        self._last: tuple | None = None  # (shape it was drawn for, scale, shift)

    def extra_repr(self) -> str:
        if self.kind == "affine":
            half = (self.std_max - self.std_min) / 2
            return (f"a x + b per channel, a~U({1 - half:g}, {1 + half:g}), b~U(-{self.mean_max:g}, "
                    f"{self.mean_max:g}), redrawn every step")
        return (f"mu~U(-{self.mean_max:g}, {self.mean_max:g}), "
                f"sigma~U({self.std_min:g}, {self.std_max:g}), redrawn every step")

    def draw_affine(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's per-channel ``(a, b)``, shaped to broadcast over a tensor shaped like ``like``."""
        shape = [1] * like.dim()
        shape[1] = like.shape[1]
        half = (self.std_max - self.std_min) / 2
        a = 1 + (2 * torch.rand(shape, device=like.device, dtype=like.dtype) - 1) * half
        b = (2 * torch.rand(shape, device=like.device, dtype=like.dtype) - 1) * self.mean_max
        self.last_mu, self.last_sigma = float(b.mean()), float(a.mean())
        return a, b

    def draw(self, like: torch.Tensor) -> torch.Tensor:
        """One step's noise for a tensor shaped like ``like`` (updates ``last_mu``/``last_sigma``)."""
        u = torch.rand(2).tolist()
        self.last_mu = (2 * u[0] - 1) * self.mean_max
        self.last_sigma = self.std_min + u[1] * (self.std_max - self.std_min)
        return torch.randn_like(like) * self.last_sigma + self.last_mu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training or self.in_eval):
            return x
        if not (self.held and self._last is not None and self._last[0] == x.shape):
            scale, shift = self.draw_affine(x) if self.kind == "affine" else (None, self.draw(x))
            self._last = (x.shape, scale, shift)
        _, scale, shift = self._last
        return x + shift if scale is None else x * scale + shift


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
