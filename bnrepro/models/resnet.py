"""Residual networks with BN, SkipInit or neither (De & Smith 2020).

Chapter "Why BN works: SkipInit". One block definition covers every arm of
the paper's Tables 1 and 2:

* ``norm="bn", alpha=None``      -- the pre-activation (Wide-)ResNet block;
* ``norm="none", alpha=0``       -- SkipInit: a learnable scalar ``alpha`` at the
  end of each residual branch, initialised to 0 (or ``"1/sqrt(d)"``, d = number
  of residual blocks), normalization removed;
* ``norm="none", alpha=1``       -- the same without the downscaling: fails at depth;
* ``norm="none", sum_scale=1/sqrt(2)`` -- each block's output ``(skip + branch)``
  multiplied by ``1/sqrt(2)``: keeps the forward variance constant, yet also
  fails at depth (Table 2);
* ``norm="none", alpha=0, dropout=p`` -- "regularized SkipInit", the paper's
  arm for its larger runs: SkipInit with biases after the convolutions (every
  unnormalized arm here has them) and dropout before the final linear layer.

:class:`ResNet` is the CIFAR Wide-ResNet-``depth``-``widen`` layout (depth =
6n + 4, three stages of n blocks, widths 16k, 32k, 64k); ``base_width`` and
``stem_stride`` shrink it for the CPU. :class:`LinearResNet` is the deep linear
network of Figure 4(a). Every block has two ``nn.Identity`` taps
(``skip_tap``, ``branch_tap``) so that hooks can read the skip path and the
residual branch (before alpha) without changing the forward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn.batchnorm import is_batchnorm
from .common import NORMS, check_choice, make_norm

ALPHAS = ("none", "0", "1/sqrt(d)", "1")


def resolve_alpha(alpha: float | str | None, num_blocks: int) -> float | None:
    """SkipInit's initial alpha: None/"none" (no scalar), "0", "1/sqrt(d)", "1" or a number."""
    if alpha is None or alpha == "none":
        return None
    if isinstance(alpha, str):
        check_choice("alpha", alpha, ALPHAS)
        return 1.0 / math.sqrt(num_blocks) if alpha == "1/sqrt(d)" else float(alpha)
    return float(alpha)


class Residual(nn.Module):
    """``out = sum_scale * (shortcut(x) + alpha * branch(x))``, with taps on both terms.

    ``shared_preact`` (a WRN transition block): the first norm+ReLU is applied
    once and feeds both the branch and a 1x1 convolution shortcut.
    """

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None = None, preact: nn.Module | None = None,
                 alpha: float | None = None, learnable_alpha: bool = True, sum_scale: float = 1.0):
        super().__init__()
        self.preact, self.branch, self.shortcut = preact, branch, shortcut
        self.skip_tap, self.branch_tap = nn.Identity(), nn.Identity()
        self.sum_scale = float(sum_scale)
        if alpha is None:
            self.alpha = None
        else:
            self.alpha = nn.Parameter(torch.tensor(float(alpha)), requires_grad=learnable_alpha)

    def forward(self, x):
        if self.preact is not None:  # transition: the shortcut sees the pre-activated input (WRN)
            a = self.preact(x)
            skip, r = self.shortcut(a), self.branch(a)
        else:
            skip, r = x, self.branch(x)
        skip, r = self.skip_tap(skip), self.branch_tap(r)
        if self.alpha is not None:
            r = self.alpha * r
        out = skip + r
        return out * self.sum_scale if self.sum_scale != 1.0 else out


def _conv(cin, cout, k, stride, bias):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")  # He init: ReLU keeps Var
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def conv_block(cin: int, cout: int, stride: int, norm: str, alpha: float | None,
               learnable_alpha: bool = True, sum_scale: float = 1.0) -> Residual:
    """Pre-activation block: [norm, ReLU, conv3x3, norm, ReLU, conv3x3] + shortcut.

    Without normalization the convolutions get (zero-initialised) biases, which
    the BN layers' beta provide otherwise.
    """
    bias = norm == "none"
    act = lambda c: nn.Sequential(make_norm(norm, c, 2), nn.ReLU())  # noqa: E731
    rest = [_conv(cin, cout, 3, stride, bias), make_norm(norm, cout, 2), nn.ReLU(), _conv(cout, cout, 3, 1, bias)]
    if stride == 1 and cin == cout:
        return Residual(nn.Sequential(*act(cin), *rest), alpha=alpha, learnable_alpha=learnable_alpha,
                        sum_scale=sum_scale)
    return Residual(nn.Sequential(*rest), shortcut=_conv(cin, cout, 1, stride, bias), preact=act(cin),
                    alpha=alpha, learnable_alpha=learnable_alpha, sum_scale=sum_scale)


class ResNet(nn.Module):
    """Pre-activation Wide-ResNet-``depth``-``widen`` for 10-class images.

    ``depth = 6n + 4`` layers: stem conv, 3 stages of n two-conv blocks, final
    linear layer (plus the shortcut convs). ``ResNet(16, 2)`` is WRN-16-2 on
    CIFAR-10; the CPU chapter uses ``base_width=8, widen=1, stem_stride=2``
    (channels 8/16/32 on 14x14 maps after the stem).
    ``alpha``: see :func:`resolve_alpha`; ``sum_scale``: e.g. ``2**-0.5``;
    ``dropout``: the drop probability of a dropout layer before the final linear
    layer (0: no such layer, the module list of every other arm unchanged).
    """

    def __init__(self, depth: int = 16, widen: int = 2, norm: str = "bn", alpha: float | str | None = None,
                 learnable_alpha: bool = True, sum_scale: float = 1.0, base_width: int = 16,
                 stem_stride: int = 1, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        check_choice("norm", norm, NORMS)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}: a drop probability in [0, 1)")
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth={depth}: a Wide-ResNet has depth 6n + 4 with n >= 1 (10, 16, 22, ...)")
        if widen < 1 or base_width < 1:
            raise ValueError(f"widen={widen}, base_width={base_width}: both must be >= 1")
        n = (depth - 4) // 6
        self.depth, self.num_blocks, self.norm = depth, 3 * n, norm
        a0 = resolve_alpha(alpha, self.num_blocks)
        self.stem = _conv(in_channels, base_width, 3, stem_stride, norm == "none")
        widths, blocks, cin = [base_width * widen * m for m in (1, 2, 4)], [], base_width
        for stage, cout in enumerate(widths):
            for j in range(n):
                blocks.append(conv_block(cin, cout, 2 if (stage > 0 and j == 0) else 1, norm, a0,
                                         learnable_alpha, sum_scale))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        drop = [nn.Dropout(dropout)] if dropout > 0 else []
        self.head = nn.Sequential(make_norm(norm, cin, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  *drop, nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class LinearResNet(nn.Module):
    """Deep linear residual network (De & Smith, Figure 4(a)).

    A LeCun-normal linear stem ``in_features -> width``, then ``num_blocks``
    blocks ``x + alpha * W_i norm(x)`` (BN over the batch, or none), no
    nonlinearity. ``depth_scaling=True`` multiplies branch i by
    ``1/sqrt(i)`` instead of normalizing: the expected effect of BN at init.
    BN layers use a cumulative moving average (``momentum=None``), so their
    running statistics after n batches are the plain mean over those batches.
    """

    def __init__(self, in_features: int = 100, width: int = 1000, num_blocks: int = 100, norm: str = "bn",
                 depth_scaling: bool = False, num_outputs: int | None = None):
        super().__init__()
        check_choice("norm", norm, NORMS)
        self.stem = nn.Linear(in_features, width, bias=False)
        nn.init.normal_(self.stem.weight, std=in_features ** -0.5)  # LeCun normal: Var(out) = Var(in)
        blocks = []
        for i in range(1, num_blocks + 1):
            lin = nn.Linear(width, width, bias=False)
            nn.init.normal_(lin.weight, std=width ** -0.5)
            bn = make_norm(norm, width, 1)
            if is_batchnorm(bn):  # PyTorch's BN or the package's
                bn.momentum = None
            blocks.append(Residual(nn.Sequential(bn, lin), alpha=i ** -0.5 if depth_scaling else None,
                                   learnable_alpha=False))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Identity() if num_outputs is None else nn.Linear(width, num_outputs)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def residual_blocks(model: nn.Module) -> list[Residual]:
    """The residual blocks of a model, in forward order."""
    return [m for m in model.modules() if isinstance(m, Residual)]


def paper_wrn(depth: int = 16, variant: str = "bn", widen: int = 2) -> ResNet:
    """The paper's n-2 Wide-ResNet on CIFAR-10 for one arm of the depth sweep."""
    return ResNet(depth, widen, **VARIANTS[variant], in_channels=3)


#: Drop probability of regularized SkipInit's dropout before the final layer: ours. The paper's
#: value for its ImageNet runs is not checked here; 0.2 is mild because our final layer sees only
#: 32 features and trains for a few hundred steps.
REG_DROPOUT = 0.2

#: The arms of the depth sweep (Tables 1 and 2) and of the SkipInit variants, as ResNet keyword arguments.
VARIANTS: dict[str, dict] = {
    "bn": {"norm": "bn", "alpha": None},
    "skipinit": {"norm": "none", "alpha": "0"},
    "skipinit_sqrt_d": {"norm": "none", "alpha": "1/sqrt(d)"},
    "alpha1": {"norm": "none", "alpha": "1"},
    "sum_sqrt2": {"norm": "none", "alpha": None, "sum_scale": 2 ** -0.5},
    "skipinit_reg": {"norm": "none", "alpha": "0", "dropout": REG_DROPOUT},
}
